#!/bin/bash
# The fused small-M W4A4 kernel on the device: its GPU tests, then the launch sweep against bf16 and the
# two-kernel path (docs/results/fused_sweep_h100.json). Usage: bash bench/device/fused.sh [sweep args]
set -x
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
timeout 200 python3 -m pytest -q -x test/test_kernels_gpu.py -k "fused or test_w4a4_kernel_matches_reference" 2>&1 | tail -15
timeout 360 python3 bench/fused_sweep.py --json "$OUT/fused_sweep_h100.json" "$@"
