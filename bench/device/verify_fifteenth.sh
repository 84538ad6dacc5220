#!/bin/bash
# For the session after the fifteenth: the GPU tests its changes did not get to run. The kept weight workspaces
# (one block of the 8B width, bit for bit against one workspace per call, one unpack per layer and loop), then the
# block fast path and the qkv-epilogue GEMM, which the kept workspace now feeds, and the graph tests with the new
# defaults (shared pool; every scale graphed). Carry .tcache.
source bench/device/autotune_carry.sh
timeout ${TEST_TIMEOUT:-420} python3 -m pytest -q test/test_kernels_gpu.py \
  -k "kept_weight_workspaces or block_fast_path or qkv_epilogue_in_the_w4a4_gemm" > "$OUT/test_gpu_verify_fifteenth.txt" 2>&1
echo "kernel tests rc $?"; tail -3 "$OUT/test_gpu_verify_fifteenth.txt" | cut -c1-300
timeout ${GRAPH_TIMEOUT:-150} python3 -m pytest -q test/test_graphs.py -k "gpu" > "$OUT/test_gpu_graphs_fifteenth.txt" 2>&1
echo "graph tests rc $?"; tail -3 "$OUT/test_gpu_graphs_fifteenth.txt" | cut -c1-300
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
