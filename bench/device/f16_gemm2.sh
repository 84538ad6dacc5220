#!/bin/bash
# Kernels v5, second run: tile swizzle (groups of 8 row blocks) in every GEMM kernel; checks first,
# then the large-M table with the pieces timed alone, then the edge proof with the new default.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
T=test/test_kernels_gpu.py
timeout 120 python3 -m pytest -q -x --tb=short $T -k "every_gemm_variant or f16_path or split_k" \
  > "$OUT/test_swizzle.txt" 2>&1; tail -2 "$OUT/test_swizzle.txt"
timeout 250 python3 bench/kernel_bench.py --only gemm --ms 2048,8192 --paths fp8w,f16w --parts \
  --json "$OUT/kernels_v5_swizzle_h100.json" > "$OUT/kernels_v5_swizzle_h100.txt" 2>&1
grep -v "^ *parts" "$OUT/kernels_v5_swizzle_h100.txt" | cut -c1-60,95- | tail -13
grep "parts" "$OUT/kernels_v5_swizzle_h100.txt" | head -12 | cut -c1-150
