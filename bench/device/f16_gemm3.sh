#!/bin/bash
# Kernels v5, third run: the f16 quantizer as one program per 16 rows (no K split), TMA tiles for the
# fp16 workspace; checks first (every candidate tile, rows beyond fp16 range, split-K replay), then
# the large-M table with the pieces timed alone.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
T=test/test_kernels_gpu.py
timeout 230 python3 -m pytest -q --tb=short $T -k "every_gemm_variant or f16_path or split_k or quantizer" \
  > "$OUT/test_f16_tma.txt" 2>&1; tail -3 "$OUT/test_f16_tma.txt"
timeout 300 python3 bench/kernel_bench.py --only gemm --ms 2048,8192 --paths fp8w,f16w --parts \
  --json "$OUT/kernels_v5_tma_h100.json" > "$OUT/kernels_v5_tma_h100.txt" 2>&1
grep -v "^ *parts" "$OUT/kernels_v5_tma_h100.txt" | cut -c1-60,95- | tail -13
grep "parts" "$OUT/kernels_v5_tma_h100.txt" | head -12 | cut -c1-150
