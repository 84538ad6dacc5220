#!/bin/bash
# Tenth session, third run: the modulated-LayerNorm kernel (kernels/adaln_triton.py) and the in-place
# residuals: GPU tests (with the qkv epilogue's), both kernels' benchmarks, then the edge proof at
# 1024² with slices of 1024 and 2048 tokens, W4A4 + INT8 KV and bf16 side by side.
source bench/device/autotune_carry.sh
timeout 150 python3 -m pytest -q test/test_kernels_gpu.py -k "qkv or adaln or fast_path or status" > "$OUT/test_fused_gpu.txt" 2>&1
echo "kernel tests rc $?"; tail -4 "$OUT/test_fused_gpu.txt"
timeout 90 python3 bench/kernel_bench.py --only adaln --json "$OUT/adaln_h100.json" > "$OUT/adaln_h100.txt" 2>&1
echo "adaln bench rc $?"; cut -c1-330 "$OUT/adaln_h100.txt"
edge_round adaln "${CHUNKS:-1024 2048}" ${MODES:-w4a4_kv8,bf16} ${EDGE_TIMEOUT:-170}
autotune_save
