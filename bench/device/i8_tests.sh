#!/bin/bash
# Eighth session (picks carried in .tcache/): every kernel GPU test after the quantizer's reciprocal
# change (x · (1/λ), x̂ · (1/s), as the reference), the default dispatch on every 8B shape and M included.
source bench/device/autotune_carry.sh
timeout 560 python3 -m pytest -q --tb=short test/test_kernels_gpu.py > "$OUT/test_kernels_gpu_i8.txt" 2>&1
tail -12 "$OUT/test_kernels_gpu_i8.txt" | cut -c1-400
autotune_save
