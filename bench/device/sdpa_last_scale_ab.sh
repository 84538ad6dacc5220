#!/bin/bash
# Thirteenth session, on the machine verify_twelfth.sh left warm (its Triton cache): 1) the GPU tests of
# the final qkv-epilogue GEMM and of the INT8-KV attention paths (the eager SDPA threshold among them);
# 2) the edge proof at the product defaults with the INT8-KV attention's dequantize + SDPA path taken
# eagerly from 4096 queries (the 1024² last scale, which runs eagerly) against graphs only, and bf16.
source bench/device/autotune_carry.sh
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q test/test_kernels_gpu.py \
  -k "qkv_epilogue or status or int8_kv_cache or sdpa" > "$OUT/test_gpu_thirteenth.txt" 2>&1
echo "tests rc $?"; tail -3 "$OUT/test_gpu_thirteenth.txt" | cut -c1-300
GRAPH_MAX=2304
VAR_GEN_KV_SDPA_EAGER_MIN_LQ=4096 edge_round sdpa_eager4096 1024 w4a4_kv8,bf16 ${EDGE_TIMEOUT:-200}
VAR_GEN_KV_SDPA_EAGER_MIN_LQ=0 edge_round sdpa_eager0 1024 w4a4_kv8 ${EDGE_TIMEOUT:-150}
autotune_save
