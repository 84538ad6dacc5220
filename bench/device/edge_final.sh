#!/bin/bash
# Seventh session, fifth run (picks carried in .tcache/): the edge proof with the product's new defaults
# (CUDA graphs on, KV caches kept and lent to the VAE decode, 512-token activation slices, direct launches)
# at 1024², 512², 768x1344 and 1344x768, W4A4 + INT8 KV and bf16 side by side.
source bench/device/autotune_carry.sh
timeout 520 python3 bench/edge_proof.py --resolutions 1024x1024,512x512,768x1344,1344x768 --cap-gib 14 \
  --modes w4a4_kv8,bf16 --cuda-graphs 1 --json "$OUT/edge_final.json" > "$OUT/edge_final.txt" 2>&1
pkill -9 -f "[e]dge_proof.py --child"
grep -E "^(w4a4|bf16)|Error|rror:" "$OUT/edge_final.txt" | head -20
