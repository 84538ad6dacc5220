#!/bin/bash
# Eleventh session: the W4A4 GEMM table (default path per M: i8 / i8w from 257 rows, the low-rank partials
# summed in kernel 1, the 4-stage i8w tile) against bf16 cuBLAS, every 8B shape, M = 2 ... 8192.
source bench/device/autotune_carry.sh
timeout ${GEMM_TIMEOUT:-480} python3 bench/kernel_bench.py --only gemm --no-paths --ms ${MS:-2,32,128,512,2048,8192} --json "$OUT/gemm_${TAG:-eleventh}_h100.json" > "$OUT/gemm_${TAG:-eleventh}_h100.txt" 2>&1
echo "gemm table rc $?"; cut -c1-260 "$OUT/gemm_${TAG:-eleventh}_h100.txt"
autotune_save
