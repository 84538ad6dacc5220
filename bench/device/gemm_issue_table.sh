#!/bin/bash
# Issue 5's GEMM table: every 8B shape, M = 2..8192, the product's default path against bf16 cuBLAS and the
# dequantize + matmul reference (eager and CUDA-graph replay; up to M = 512 also with the weights cold in the L2),
# in two halves, each inside the device tool's 10-minute limit on a fresh machine. The shipped tuning table
# (kernels/tuned/) covers the rows a 1024² generation meets on the block shapes; M = 8192 and the two other shapes
# at their larger M are tuned here.
#   bash bench/device/gemm_issue_table.sh 1   (then 2; bench/device/gemm_table.sh is the third session's, every path)
source bench/device/autotune_carry.sh
build_extension
half=${1:-1}
if [ "$half" = 1 ]; then shapes=3584x10752,3584x3584,2048x7168; else shapes=3584x14336,14336x3584,3584x21504; fi
timeout ${GEMM_TIMEOUT:-500} python3 bench/kernel_bench.py --only gemm --no-paths --reference --shapes "$shapes" \
  --json "$OUT/gemm_table_part$half.json" > "$OUT/gemm_table_part$half.txt" 2>&1
echo "gemm rc $? s $(( $(date +%s) - t0 ))"
grep -v Warning "$OUT/gemm_table_part$half.txt" | tail -30
