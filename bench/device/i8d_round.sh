#!/bin/bash
# Fifteenth session: the i8d GEMM (in-register weights, de-interleaved activations: two K = 32 dots per group, no
# nibble interleave) against i8 (in-register, interleaved) and i8w (workspace) at the sizes the small and middle
# scales of a 1024² generation run: equality with i8 first, then the graph-replayed table.
source bench/device/autotune_carry.sh
timeout ${CHECK_TIMEOUT:-200} python3 bench/i8d_check.py --ms ${MS:-32,128,288,512,1152,2048} --json "$OUT/i8d_check.json" \
  > "$OUT/i8d_check.txt" 2>&1
echo "check rc $?"; tail -2 "$OUT/i8d_check.txt"
timeout ${TABLE_TIMEOUT:-330} python3 bench/kernels.py --only gemm --shapes 3584x10752,3584x3584,3584x14336,14336x3584 \
  --ms ${MS:-32,128,288,512,1152,2048} --paths i8,i8w,i8d --json "$OUT/gemm_i8d.json" > "$OUT/gemm_i8d.txt" 2>&1
echo "table rc $?"; cat "$OUT/gemm_i8d.txt"
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
