#!/bin/bash
# Ninth session: the INT8-KV attention (unmasked main loop) vs SDPA flash and SDPA's own pick, then the
# edge proof with the FFN's GELU in the W4A4 epilogue and the attention written over its queries, at
# 1024- and 2048-token slices.
source bench/device/autotune_carry.sh
timeout 150 python3 bench/kernel_bench.py --only attention --json "$OUT/attn_ninth.json" > "$OUT/attn_ninth.txt" 2>&1
echo "attn rc $?"; tail -16 "$OUT/attn_ninth.txt" | cut -c1-200
autotune_save
for C in 1024 2048; do
  timeout 200 python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes w4a4_kv8 \
    --cuda-graphs 1 --chunk-tokens $C --json "$OUT/edge_fused_c$C.json" > "$OUT/edge_fused_c$C.txt" 2>&1
  echo "edge $C rc $?"; pkill -9 -f "[e]dge_proof.py --child"
  grep -E "^w4a4|rror" "$OUT/edge_fused_c$C.txt" | head -5
done
autotune_save
