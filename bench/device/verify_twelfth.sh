#!/bin/bash
# What the twelfth session could not run for lack of device time, for the next session (nothing carried:
# a fresh machine's first start). 1) The edge proof at the product defaults (1024-token slices, graphs up
# to 2304 tokens), W4A4 + INT8 KV, with every kernel tuned and compiled in the first warm-up generation:
# does Generator's free_or_collect keep the KV pool from growing, so that the first start fits the cap?
# (~500 s). 2) In a second call: the GPU test of the final qkv-epilogue GEMM (joined stores) against
# float64, with the Triton cache this call leaves (TESTS=1).
source bench/device/autotune_carry.sh
if [ "${TESTS:-0}" = "1" ]; then
  timeout 330 python3 -m pytest -q test/test_kernels_gpu.py -k "qkv_epilogue_in_the_w4a4 or status" > "$OUT/test_gpu_qkv_final.txt" 2>&1
  echo "qkv tests rc $?"; tail -3 "$OUT/test_gpu_qkv_final.txt" | cut -c1-300
else
  GRAPH_MAX=2304 edge_round fresh_defaults 1024 w4a4_kv8 ${EDGE_TIMEOUT:-560}
fi
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
