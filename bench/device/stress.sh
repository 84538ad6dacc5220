#!/bin/bash
# W4A4 GEMM stress (split-K correctness at small M, tile counters re-armed), then the GPU kernel tests.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 330 python3 bench/kernel_stress.py --seconds 150 --json "$OUT/kernel_stress_h100.json" 2>&1 | tail -30
timeout 240 python3 -m pytest -q test/test_kernels_gpu.py --durations=8 2>&1 | tail -20
