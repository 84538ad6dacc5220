#!/bin/bash
# Fourteenth session: the scale graphs captured into one shared memory pool (VAR_GEN_GRAPH_POOL=shared):
# the edge proof (W4A4 + INT8 KV, product defaults otherwise) for its reserved memory and latency, then the
# GPU graph tests (replayed = eager bit for bit, two text lengths through one pool; the KV pool's renewal).
source bench/device/autotune_carry.sh
export VAR_GEN_GRAPH_POOL=shared
GRAPH_MAX=2304 edge_round shared_pool 1024 w4a4_kv8 ${EDGE_TIMEOUT:-150}
grep -A2 "shared-memory estimate" "$OUT/edge_shared_pool_c1024.txt"
timeout ${TEST_TIMEOUT:-180} python3 -m pytest -q test/test_graphs.py -k "replayed_graphs or held_kv_block" \
  > "$OUT/test_gpu_graphs_shared_pool.txt" 2>&1
echo "graph tests rc $?"; tail -3 "$OUT/test_gpu_graphs_shared_pool.txt" | cut -c1-300
