#!/bin/bash
# Seventh session, first run: the direct launches (kernels/launch.py) and the fused INT8 KV store checked
# against the reference, then the 1024² edge proof of W4A4 + INT8 KV with CUDA graphs on, its kept KV
# caches lent to the VAE decode (Generator.decode_in_kv_memory), product activation slices (512).
# Triton's autotuning picks are saved to $OUT (autotune.tgz) for the next run to carry in .tcache/.
source bench/device/autotune_carry.sh
timeout 200 python3 -m pytest -q --tb=short test/test_kernels_gpu.py \
  -k "direct_launches or kv_store or attend_uses_kernel or f16_path_matches" > "$OUT/test_launch_store.txt" 2>&1
tail -3 "$OUT/test_launch_store.txt"
timeout 330 python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes w4a4_kv8 --cuda-graphs 1 \
  --json "$OUT/edge_graphs_lend_w4a4.json" > "$OUT/edge_graphs_lend_w4a4.txt" 2>&1
pkill -9 -f "[e]dge_proof.py --child"
grep -E "^(w4a4|bf16)|Error|error|arn" "$OUT/edge_graphs_lend_w4a4.txt" | head -20
autotune_save
ls -la "$OUT"
