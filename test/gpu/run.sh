#!/bin/bash
# GPU checks and kernel benchmarks, run through the device tool (CI skips these on the CPU).
# Writes kernels_h100.json (bench/kernel_bench.py) and the default model's accuracy with kernels on/off.
export PYTHONUNBUFFERED=1
OUT=${OUT:-.}
# every test CI skips for want of a GPU, from every file (test/conftest.py); one device call may not hold them all on a
# fresh machine: bench/device/gpu_tests_parts.sh runs them in parts
VAR_GEN_GPU_TESTS_ONLY=1 python3 -m pytest -q test 2>&1 | tail -25
python3 bench/kernel_bench.py --json "$OUT/kernels_h100.json"
# the embedded model end to end, W4A4 + INT8 KV, kernels vs the PyTorch reference (same seeds)
for k in 1 0; do
  echo "== eval-default w4a4+kv8 VAR_GEN_KERNELS=$k"
  VAR_GEN_KERNELS=$k python3 -m var_gen_ros.cli eval-default --prompts 100 --device cuda --dtype bf16 \
    --quantization w4a4 --kv-cache int8 2>&1 | tail -3
done
