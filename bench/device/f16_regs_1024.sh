#!/bin/bash
# Seventh session, ninth run: at M = 1024 (the product's slices), the f16 path with the weights
# dequantized in registers (no workspace, so no memory at the edge proof's peak) against fp8, after the
# one-pass row bounds (picks carried in .tcache/).
source bench/device/autotune_carry.sh
timeout 300 python3 bench/kernel_bench.py --only gemm --ms 1024 --paths fp8,f16,f16w \
  --shapes 3584x10752,3584x3584,3584x14336,14336x3584 --json "$OUT/gemm_f16regs_1024_h100.json" > "$OUT/gemm_f16regs_1024_h100.txt" 2>&1
tail -6 "$OUT/gemm_f16regs_1024_h100.txt" | cut -c1-220
