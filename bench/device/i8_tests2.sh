#!/bin/bash
# Eighth session (picks carried in .tcache/): the rest of the kernel GPU tests (the first call ran the
# default dispatch on every shape and M and the quantizer tests, then hit its time limit), then the
# second half of the i8 GEMM table (the last three 8B shapes), with the first call's tuning picks.
source bench/device/autotune_carry.sh
timeout 300 python3 -m pytest -q --tb=short test/test_kernels_gpu.py \
  -k "not w4a4_kernel_matches_reference and not quantizer_launches" > "$OUT/test_kernels_gpu_i8_part2.txt" 2>&1
tail -6 "$OUT/test_kernels_gpu_i8_part2.txt" | cut -c1-400
timeout 250 python3 bench/kernel_bench.py --only gemm --shapes 3584x14336,14336x3584,3584x21504 --paths i8,i8w --parts \
  --json "$OUT/gemm_i8_table2.json" > "$OUT/gemm_i8_table2.txt" 2>&1
grep -v parts "$OUT/gemm_i8_table2.txt" | cut -c1-200 | tail -20
autotune_save
