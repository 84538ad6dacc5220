#!/bin/bash
# Thirteenth session: the fresh machine's first start at the product defaults (nothing carried), W4A4 +
# INT8 KV, with VAR_GEN_MEMORY_TRACE=1: the KV pool's reserved bytes before and after each generation's
# VAE decode and after the caches' re-making, and the warning naming whatever still holds the KV block.
source bench/device/autotune_carry.sh
VAR_GEN_MEMORY_TRACE=1 timeout ${EDGE_TIMEOUT:-570} python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 \
  --modes w4a4_kv8 --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 2304 --repeats 1 \
  --json "$OUT/edge_fresh_trace.json" > "$OUT/edge_fresh_trace.txt" 2>&1
echo "edge rc $?"; pkill -9 -f "[e]dge_proof.py --child"
grep -E "^(w4a4|bf16)|rror|still held" "$OUT/edge_fresh_trace.txt" | cut -c1-1500 | head -8
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
