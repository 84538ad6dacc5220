#!/bin/bash
# Ninth session: the edge proof at 1024² with the per-token work in slices of $1 tokens (default 2048)
# and CUDA graphs of scales up to $2 tokens (default 1024), W4A4 + INT8 KV and bf16 side by side.
source bench/device/autotune_carry.sh
C=${1:-2048}; G=${2:-1024}
timeout ${3:-540} python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes w4a4_kv8,bf16 \
  --cuda-graphs 1 --chunk-tokens $C --graph-max-tokens $G --json "$OUT/edge_c${C}_g${G}.json" > "$OUT/edge_c${C}_g${G}.txt" 2>&1
echo "edge rc $?"
pkill -9 -f "[e]dge_proof.py --child"
grep -E "^(w4a4|bf16)|Error|rror:" "$OUT/edge_c${C}_g${G}.txt" | head -20
tail -8 "$OUT/edge_c${C}_g${G}.txt" | cut -c1-220
autotune_save
