#!/bin/bash
# Tenth session, second run: the qkv-epilogue GPU test (warmed before its memory counts) and the edge
# proof at 1024-token slices, which ran out of memory in qkv_round.sh (now with the allocator's segments).
source bench/device/autotune_carry.sh
timeout 100 python3 -m pytest -q test/test_kernels_gpu.py -k "qkv" > "$OUT/test_qkv_gpu.txt" 2>&1
echo "kernel tests rc $?"; tail -3 "$OUT/test_qkv_gpu.txt"
edge_round qkv "${CHUNKS:-1024}" ${MODES:-w4a4_kv8,bf16} ${EDGE_TIMEOUT:-300}
autotune_save
