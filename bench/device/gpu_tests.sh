#!/bin/bash
# GPU kernel tests only (every path and tile; autotuning makes this the slow part).
export PYTHONUNBUFFERED=1
timeout 560 python3 -m pytest -q -x test/test_kernels_gpu.py --durations=8 2>&1 | tail -16
