#!/bin/bash
# The GEMM table (every 8B shape, M = 2..8192, every path) in two halves, each well inside the
# device tool's 10-minute limit (one pass over all six shapes takes ~8 minutes with autotuning).
export PYTHONUNBUFFERED=1
OUT=${OUT:-.}
half=${1:-1}
if [ "$half" = 1 ]; then shapes=3584x10752,3584x3584,2048x7168; else shapes=3584x14336,14336x3584,3584x21504; fi
timeout 560 python3 bench/kernel_bench.py --only gemm --shapes "$shapes" --json "$OUT/kernels_fp8_h100_part$half.json" 2>&1 | grep -v Warning
