#!/bin/bash
# Seventh session, fourth run (picks carried in .tcache/): the GPU tests of the CUDA graphs (W4A4 + INT8 KV
# and bf16: replay == eager with the caches' pool lent to the VAE decode and the shared input buffer),
# then the f16w GEMM at M = 8192 with the TMA tiles among the tuner's candidates and without (the TMA
# tiles had never been timed: docs/BENCHMARKS.md, Kernels v5).
source bench/device/autotune_carry.sh
timeout 300 python3 -m pytest -q --tb=short test/test_graphs.py -k gpu > "$OUT/test_graphs_gpu.txt" 2>&1
tail -4 "$OUT/test_graphs_gpu.txt"
for tma in 0 1; do
  VAR_GEN_W4A4_TMA=$tma timeout 110 python3 bench/kernel_bench.py --only gemm --ms 8192 --paths f16w \
    --json "$OUT/gemm_f16w_tma$tma.json" > "$OUT/gemm_f16w_tma$tma.txt" 2>&1
  echo "TMA=$tma"; tail -8 "$OUT/gemm_f16w_tma$tma.txt" | cut -c1-150
done
