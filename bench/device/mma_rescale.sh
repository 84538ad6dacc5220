#!/usr/bin/env bash
# The per-group rescale's cost beside INT8 / INT4 tensor-core MMA, on the lent GPU (bench/mma_rescale.py;
# needs CuPy, which the device image has). Two occupancies: 4 and 2 blocks of 8 warps per SM.
set -uo pipefail
OUT=${OUT:-.}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
python3 bench/mma_rescale.py --json "$OUT/mma_rescale_h100.json" 2>&1 | tee "$OUT/mma_rescale_h100.txt"
python3 bench/mma_rescale.py --blocks-per-sm 2 --json "$OUT/mma_rescale_b2_h100.json" 2>&1 | tee "$OUT/mma_rescale_b2_h100.txt"
