#!/bin/bash
# Eighth session (picks carried in .tcache/): the GEMM table of the i8 path against bf16 cuBLAS, every
# 8B shape and M, in two halves ($1 = 1: the first three shapes, 2: the last three).
source bench/device/autotune_carry.sh
shapes=$([ "$1" = 1 ] && echo 3584x10752,3584x3584,2048x7168 || echo 3584x14336,14336x3584,3584x21504)
timeout 560 python3 bench/kernel_bench.py --only gemm --shapes $shapes --paths i8,i8w --parts \
  --json "$OUT/gemm_i8_table$1.json" > "$OUT/gemm_i8_table$1.txt" 2>&1
grep -v parts "$OUT/gemm_i8_table$1.txt" | cut -c1-200 | tail -20
autotune_save
