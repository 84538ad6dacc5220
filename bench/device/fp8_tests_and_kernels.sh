#!/bin/bash
# GPU kernel tests (all paths and tiles), then the GEMM table with the FP8 default (every path at every M).
export PYTHONUNBUFFERED=1
OUT=${OUT:-.}
timeout 250 python3 -m pytest -q -x test/test_kernels_gpu.py 2>&1 | tail -6
timeout 320 python3 bench/kernels.py --only gemm --json "$OUT/kernels_fp8_h100.json" 2>&1 | grep -v Warning
