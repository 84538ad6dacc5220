#!/bin/bash
# Ninth session: where the GPU time of a 1024² generation goes (bench/gpu_time_profile.py, 4 blocks of
# Infinity-8B shapes, W4A4 + INT8 KV vs bf16): slices of 512 / 2048 tokens, CUDA graphs up to 1024 /
# 4096 tokens, and a profile of eager generations.
source bench/device/autotune_carry.sh
timeout ${1:-450} python3 bench/gpu_time_profile.py --depth 4 --size 1024 ${2} \
  --json "$OUT/gpu_time_profile.json" > "$OUT/gpu_time_profile.txt" 2>&1
echo "profile rc $?"
autotune_save
grep -v "^    " "$OUT/gpu_time_profile.txt" | grep -v Warn | tail -60 | cut -c1-220
