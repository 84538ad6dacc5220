#!/bin/bash
# Split-K GPU tests, then the small-M GEMM table with split-K (autotuned by graph replay).
export PYTHONUNBUFFERED=1
timeout 200 python3 -m pytest -q -x test/test_kernels_gpu.py -k "split_k or every_gemm_variant" 2>&1 | tail -4
timeout 330 python3 bench/kernel_bench.py --only gemm --no-paths --ms 2,32,128,512 --json "$OUT/gemm_small_m_splitk_h100.json"
