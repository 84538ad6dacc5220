#!/bin/bash
# Eleventh session, third run: the GPU kernel tests after the low-rank partials' in-kernel reduction,
# the 4-stage i8w tile and the graph-only dequantize+SDPA attention, then the W4A4 forward vs bf16
# at the product's 2048-row slices (bench/int8_gemm_probe.py).
source bench/device/autotune_carry.sh
timeout ${TEST_TIMEOUT:-420} python3 -m pytest -q test/test_kernels_gpu.py --durations=6 > "$OUT/test_kernels_gpu_eleventh.txt" 2>&1
echo "kernel tests rc $?"; tail -14 "$OUT/test_kernels_gpu_eleventh.txt" | cut -c1-300
timeout 120 python3 bench/int8_gemm_probe.py --ms 2048 --json "$OUT/int8_gemm_probe2_h100.json" > "$OUT/int8_gemm_probe2_h100.txt" 2>&1
echo "int8 probe rc $?"; cut -c1-700 "$OUT/int8_gemm_probe2_h100.txt"
autotune_save
