#!/bin/bash
# Eighth session, first run: the i8 path (two-level scales, one INT8 MMA accumulation over all of K).
# GPU tests of every quantizer layout and GEMM variant, then the GEMM side by side with bf16 on two shapes.
source bench/device/autotune_carry.sh
timeout 330 python3 -m pytest -q --tb=short -x test/test_kernels_gpu.py \
  -k "quantizer_launches or every_gemm_variant or split_k or beyond_fp16 or default_path or kernel_status" \
  > "$OUT/test_i8_gpu.txt" 2>&1
tail -15 "$OUT/test_i8_gpu.txt" | cut -c1-400
timeout 220 python3 bench/kernel_bench.py --only gemm --shapes 3584x10752,14336x3584 --ms 32,512,2048,8192 \
  --paths fp8w,f16w,i8,i8w --parts --json "$OUT/gemm_i8_first.json" > "$OUT/gemm_i8_first.txt" 2>&1
cut -c1-260 "$OUT/gemm_i8_first.txt" | tail -20
autotune_save
