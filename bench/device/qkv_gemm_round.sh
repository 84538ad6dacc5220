#!/bin/bash
# Twelfth session: the qkv projection with the attention's input epilogue inside the W4A4 GEMM
# (w4a4_qkv_rope): its GPU tests (TESTS adds more), and the qkv table (fused vs W4A4 GEMM + epilogue
# kernel vs bf16 cuBLAS + epilogue kernel). Leaves the Triton cache in $OUT.
source bench/device/autotune_carry.sh
timeout ${TEST_TIMEOUT:-330} python3 -m pytest -q -x test/test_kernels_gpu.py -k "${TESTS:-qkv_epilogue_in_the_w4a4}" > "$OUT/test_gpu_twelfth_${TAG:-a}.txt" 2>&1
echo "kernel tests rc $?"; tail -6 "$OUT/test_gpu_twelfth_${TAG:-a}.txt" | cut -c1-400
timeout ${BENCH_TIMEOUT:-200} python3 bench/kernel_bench.py --only qkv_gemm --json "$OUT/qkv_gemm_${TAG:-a}_h100.json" > "$OUT/qkv_gemm_${TAG:-a}_h100.txt" 2>&1
echo "bench rc $?"; cut -c1-600 "$OUT/qkv_gemm_${TAG:-a}_h100.txt" | tail -8
autotune_save
