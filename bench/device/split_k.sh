#!/bin/bash
# Split-K for small M: the default GEMM at M = 2, 32, 128, 512 against bf16, without split-K
# (VAR_GEN_W4A4_SPLIT_MAX_M=0) and with it, one process each, same machine and run.
export PYTHONUNBUFFERED=1
MS=2,32,128,512
VAR_GEN_W4A4_SPLIT_MAX_M=0 timeout 250 python3 bench/kernel_bench.py --only gemm --no-paths --ms $MS --json "$OUT/gemm_small_m_nosplit_h100.json"
timeout 290 python3 bench/kernel_bench.py --only gemm --no-paths --ms $MS --json "$OUT/gemm_small_m_splitk_h100.json"
