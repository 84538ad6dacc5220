#!/bin/bash
# Tenth session: the fused qkv epilogue (kernels/qkv_rope_triton.py). Its GPU test and benchmark, then
# the edge proof at 1024² with slices of 1024 and 512 tokens (graphs up to 1024 tokens), W4A4 + INT8 KV
# and bf16 side by side.
source bench/device/autotune_carry.sh
timeout 120 python3 -m pytest -q test/test_kernels_gpu.py -k "qkv or attend or status" > "$OUT/test_qkv_gpu.txt" 2>&1
echo "kernel tests rc $?"; tail -4 "$OUT/test_qkv_gpu.txt"
timeout 90 python3 bench/kernel_bench.py --only qkv --json "$OUT/qkv_epilogue_h100.json" > "$OUT/qkv_epilogue_h100.txt" 2>&1
echo "qkv bench rc $?"; cut -c1-400 "$OUT/qkv_epilogue_h100.txt"
edge_round qkv "${CHUNKS:-1024 512}" w4a4_kv8,bf16 ${EDGE_TIMEOUT:-170}
autotune_save
