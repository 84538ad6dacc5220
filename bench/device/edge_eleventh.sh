#!/bin/bash
# Eleventh session, fourth run: the attention, split-K, direct-launch and whole-block GPU tests, then the
# edge proof at 1024² (1024-token slices), W4A4 + INT8 KV and bf16 side by side, with the low-rank
# reduction, the 4-stage i8w tile and the graph-only dequantize+SDPA attention.
source bench/device/autotune_carry.sh
timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q test/test_kernels_gpu.py -k "${TESTS:-int8_kv or status or default_path or block_fast or split_k or direct_launches}" > "$OUT/test_gpu_eleventh_b.txt" 2>&1
echo "kernel tests rc $?"; tail -4 "$OUT/test_gpu_eleventh_b.txt" | cut -c1-300
edge_round eleventh "${CHUNKS:-1024}" ${MODES:-w4a4_kv8,bf16} ${EDGE_TIMEOUT:-300}
autotune_save
