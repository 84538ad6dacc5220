#!/bin/bash
# Seventh session, second run (Triton autotuning picks carried in .tcache/ from the first): the 1024² edge
# proof at the product's activation slices (512), side by side:
#   graphs on  (KV caches kept, lent to the VAE decode, one shared graph input buffer): W4A4 + INT8 KV, bf16
#   graphs off (the product default): W4A4 + INT8 KV and bf16 with the direct launches and the fused KV
#   store, then W4A4 + INT8 KV again with VAR_GEN_FAST_LAUNCH=0 (Triton's own launch path)
source bench/device/autotune_carry.sh
E="python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14"
timeout 230 $E --modes w4a4_kv8,bf16 --cuda-graphs 1 --json "$OUT/edge_graphs_lend.json" > "$OUT/edge_graphs_lend.txt" 2>&1
pkill -9 -f "[e]dge_proof.py --child"
grep -E "^(w4a4|bf16)|Error|rror:" "$OUT/edge_graphs_lend.txt" | head
timeout 200 $E --modes w4a4_kv8,bf16 --json "$OUT/edge_eager_direct.json" > "$OUT/edge_eager_direct.txt" 2>&1
pkill -9 -f "[e]dge_proof.py --child"
grep -E "^(w4a4|bf16)|Error|rror:" "$OUT/edge_eager_direct.txt" | head
VAR_GEN_FAST_LAUNCH=0 timeout 120 $E --modes w4a4_kv8 --json "$OUT/edge_eager_tritonlaunch.json" > "$OUT/edge_eager_tritonlaunch.txt" 2>&1
pkill -9 -f "[e]dge_proof.py --child"
grep -E "^(w4a4|bf16)|Error|rror:" "$OUT/edge_eager_tritonlaunch.txt" | head
autotune_save
