#!/bin/bash
# Twelfth session: the qkv epilogue in the W4A4 GEMM vs separate, alternated in one process (bench/qkv_ab.py),
# at 1024- and 2048-token slices.
source bench/device/autotune_carry.sh
for C in ${CHUNKS:-1024 2048}; do
  timeout ${AB_TIMEOUT:-250} python3 bench/qkv_ab.py --rounds ${ROUNDS:-3} --chunk-tokens $C --json "$OUT/qkv_ab_c$C.json" > "$OUT/qkv_ab_c$C.txt" 2>&1
  echo "ab C=$C rc $?"; tail -1 "$OUT/qkv_ab_c$C.txt" | cut -c1-900
done
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
