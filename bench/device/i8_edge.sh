#!/bin/bash
# Eighth session, second run (picks carried in .tcache/): the edge proof at 1024² with the i8 path as the
# W4A4 default (workspace from 512 rows), W4A4 + INT8 KV and bf16 side by side, CUDA graphs on.
source bench/device/autotune_carry.sh
timeout 540 python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 \
  --modes w4a4_kv8,bf16 --cuda-graphs 1 --json "$OUT/edge_i8.json" > "$OUT/edge_i8.txt" 2>&1
pkill -9 -f "[e]dge_proof.py --child"
grep -E "^(w4a4|bf16)|Error|rror:" "$OUT/edge_i8.txt" | head -20
tail -30 "$OUT/edge_i8.txt" | cut -c1-220
autotune_save
