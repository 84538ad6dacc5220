#!/bin/bash
# Eleventh session: the GPU test of every W4A4 tile candidate (the new 4-stage i8w tile among them), alone.
source bench/device/autotune_carry.sh
timeout ${TEST_TIMEOUT:-500} python3 -m pytest -q test/test_kernels_gpu.py -k "every_gemm_variant" --durations=4 > "$OUT/test_gpu_tiles_eleventh_full.txt" 2>&1
echo "tile tests rc $?"; tail -8 "$OUT/test_gpu_tiles_eleventh_full.txt" | cut -c1-300
