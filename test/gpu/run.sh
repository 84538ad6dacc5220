#!/bin/bash
# GPU checks and kernel benchmark, run through the device tool (CI skips these on the CPU).
export PYTHONUNBUFFERED=1
python3 -m pytest -q -x test/test_kernels_gpu.py 2>&1 | tail -15
python3 bench/kernels.py --json "${OUT:-.}/kernels_h100.json"
