#!/bin/bash
# Fourteenth session. PART 1: the GPU tests of the GEMMs after the sm_80-sm_89 epilogue form (LR_BF16,
# forced on the H100), the default dispatch and the qkv-epilogue GEMM (retuned: the kernels' source
# changed), the split-K replays and the direct launches. PART 2: the edge proof at the product defaults
# (W4A4 + INT8 KV and bf16), to check that the H100's path (tf32x3 epilogue, TMA candidates) is unchanged.
source bench/device/autotune_carry.sh
if [ "${PART:-1}" = "1" ]; then
  timeout ${TEST_TIMEOUT:-280} python3 -m pytest -q test/test_kernels_gpu.py \
    -k "sm80_low_rank or (w4a4_kernel_matches_reference and 3584-3584) or (qkv_epilogue_in_the_w4a4 and 160) or split_k_is_deterministic or direct_launches or kernel_status" \
    > "$OUT/test_gpu_fourteenth.txt" 2>&1
  echo "kernel tests rc $?"; tail -3 "$OUT/test_gpu_fourteenth.txt" | cut -c1-400
else
  GRAPH_MAX=2304 edge_round fourteenth 1024 w4a4_kv8,bf16 ${EDGE_TIMEOUT:-540}
fi
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
