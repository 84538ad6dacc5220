#!/bin/bash
# What switching graph_pool's default to "shared" needs (fourteenth session's open item), for the next device
# session: PART 1 the GPU graph tests (the new shared-pool test in bf16 and W4A4, and the replayed-equals-eager
# and KV-pool tests with every graph in one pool); PART 2 the edge proof in both modes with the shared pool.
source bench/device/autotune_carry.sh
export VAR_GEN_GRAPH_POOL=shared
if [ "${PART:-1}" = "1" ]; then
  timeout ${TEST_TIMEOUT:-540} python3 -m pytest -q test/test_graphs.py -k "gpu or pool" \
    > "$OUT/test_gpu_graphs_shared_pool.txt" 2>&1
  echo "graph tests rc $?"; tail -3 "$OUT/test_gpu_graphs_shared_pool.txt" | cut -c1-300
else
  GRAPH_MAX=2304 edge_round shared_pool_both 1024 w4a4_kv8,bf16 ${EDGE_TIMEOUT:-540}
  grep -A3 "shared-memory estimate" "$OUT/edge_shared_pool_both_c1024.txt"
fi
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
