#!/bin/bash
# Thirteenth session. PART 1: the GPU tests of the final qkv-epilogue GEMM, the INT8-KV attention paths
# (the eager SDPA threshold among them) and the KV pool's renewal, then the edge proof at the product
# defaults with the INT8-KV attention's dequantize + SDPA path taken eagerly from 4096 queries (the 1024²
# last scale, which runs eagerly), W4A4 + INT8 KV and bf16. PART 2 (on the machine PART 1 left warm): the
# same with the path in graphs only (the default), then from 4096 queries again.
source bench/device/autotune_carry.sh
if [ "${PART:-1}" = "1" ]; then
  timeout 90 python3 -m pytest -q test/test_graphs.py -k "gpu or pool" > "$OUT/test_gpu_graphs_thirteenth.txt" 2>&1
  echo "graph tests rc $?"; tail -3 "$OUT/test_gpu_graphs_thirteenth.txt" | cut -c1-300
  timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q test/test_kernels_gpu.py \
    -k "qkv_epilogue or status or int8_kv_cache or sdpa" > "$OUT/test_gpu_thirteenth.txt" 2>&1
  echo "kernel tests rc $?"; tail -3 "$OUT/test_gpu_thirteenth.txt" | cut -c1-300
  GRAPH_MAX=2304 VAR_GEN_KV_SDPA_EAGER_MIN_LQ=4096 edge_round sdpa_eager4096 1024 w4a4_kv8,bf16 ${EDGE_TIMEOUT:-330}
else
  GRAPH_MAX=2304 VAR_GEN_KV_SDPA_EAGER_MIN_LQ=0 edge_round sdpa_eager0 1024 w4a4_kv8,bf16 ${EDGE_TIMEOUT:-200}
  GRAPH_MAX=2304 VAR_GEN_KV_SDPA_EAGER_MIN_LQ=4096 edge_round sdpa_eager4096b 1024 w4a4_kv8 ${EDGE_TIMEOUT:-150}
fi
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
