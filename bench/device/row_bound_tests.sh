#!/bin/bash
# Seventh session, eighth run: GPU tests after the one-pass row bounds and the f16 paths from 2048 rows.
source bench/device/autotune_carry.sh
T=test/test_kernels_gpu.py
timeout 150 python3 -m pytest -q --tb=short $T -k "f16_path or quantizer_launches or direct" > "$OUT/test_rb1.txt" 2>&1
tail -3 "$OUT/test_rb1.txt"
timeout 330 python3 -m pytest -q --tb=short $T -k "kernel_matches_reference or split_k" > "$OUT/test_rb2.txt" 2>&1
tail -3 "$OUT/test_rb2.txt"
