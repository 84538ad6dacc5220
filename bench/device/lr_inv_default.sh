#!/bin/bash
# The thirty-third session's second call, after "bf16x2i" became kernel 1's default low-rank dot: every GPU test of
# the kernels (the W4A4 forwards against the reference, the quantizer's launches), the offload's GPU tests (the staged
# reads' release through empty_host_cache), then the 1024² edge proof side by side on one machine (offloaded, bf16,
# resident; te_park.sh's "side", SIDE_TAG 5). About 8 minutes.
source bench/device/autotune_carry.sh
build_extension
timeout ${KTEST_TIMEOUT:-220} python3 -m pytest -q test/test_kernels_gpu.py > "$OUT/test_kernels_gpu.txt" 2>&1
echo "kernel tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/test_kernels_gpu.txt"
PARTS="tests side" SIDE_TAG=${SIDE_TAG:-5} TEST_TIMEOUT=${TEST_TIMEOUT:-120} bash bench/device/te_park.sh
