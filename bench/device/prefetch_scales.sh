#!/bin/bash
# The in-register i8 GEMM with each group's weight scales loaded one group ahead (PREFETCH_SCALES) against
# without, in two processes on one machine (the first compiles), the block shapes at the rows the i8 path serves
# (up to 256; from 257 rows i8w reads a workspace instead). Carry .tcache when there is one.
source bench/device/autotune_carry.sh
for pf in 0 1; do
  VAR_GEN_W4A4_PREFETCH_SCALES=$pf timeout ${GEMM_TIMEOUT:-240} python3 bench/kernel_bench.py --only gemm \
    --shapes 3584x10752,3584x3584,3584x14336,14336x3584 --ms 2,32,128,256 --no-paths \
    --json "$OUT/gemm_prefetch$pf.json" > "$OUT/gemm_prefetch$pf.txt" 2>&1
  echo "prefetch=$pf rc $?"; grep -vi warn "$OUT/gemm_prefetch$pf.txt" | tail -20 | cut -c1-160
done
autotune_save
