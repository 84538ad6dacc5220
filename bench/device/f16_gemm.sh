#!/bin/bash
# Kernels v5: the f16 path (fp16 MMA over exactly dequantized operands) vs FP8 and bf16 at M >= 512,
# with its correctness checks first and the rest of the GEMM tests last.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
T=test/test_kernels_gpu.py
timeout 150 python3 -m pytest -q -x --tb=short $T -k "every_gemm_variant and not True or f16_path or kernel_status" \
  > "$OUT/test_f16_first.txt" 2>&1; tail -3 "$OUT/test_f16_first.txt"
timeout 300 python3 bench/kernel_bench.py --only gemm --ms 512,2048,8192 --paths fp8,fp8w,f16,f16w \
  --json "$OUT/kernels_v5_large_m_h100.json" > "$OUT/kernels_v5_large_m_h100.txt" 2>&1
cut -c1-60,95- "$OUT/kernels_v5_large_m_h100.txt" | tail -20
timeout 130 python3 -m pytest -q --tb=short $T -k "gemm or quantizer or split_k" > "$OUT/test_kernels_gemm.txt" 2>&1
tail -4 "$OUT/test_kernels_gemm.txt"
