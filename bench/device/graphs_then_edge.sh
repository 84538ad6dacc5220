#!/bin/bash
# test/test_graphs.py's GPU tests first (whole tiny generations captured and replayed against eager, the real
# out-of-memory tests, the engine's release), then the 1024² edge proof in MODES (default "w4a4_kv8 bf16") with what
# time the call has left. Written for the twenty-seventh session, whose device time went mostly to machines that did
# not start: the tests were what the new defaults (the small-M GEMM as a programmatic dependent launch, twenty-sixth
# session) and the out-of-memory pause of the graphs still lacked.
#   CALL_S (default 560): the call's own budget in seconds; TEST_TIMEOUT (default 400: the graph tests took more
#   than 280 s on a fresh H100, twenty-eighth session); COMMITTED_PICKS=0 as in
#   autotune_carry.sh (only the tables shipped in kernels/tuned/, as on a robot's first start); GRAPH_K: the tests'
#   -k expression (default all the GPU ones), e.g. "worker_thread or out_of_memory or idle_release"
source bench/device/autotune_carry.sh
build_extension
timeout ${TEST_TIMEOUT:-400} python3 -m pytest -v test/test_graphs.py -k "${GRAPH_K:-gpu or held_kv or grown_kv or release}" \
  --durations=8 > "$OUT/test_graphs_gpu.txt" 2>&1
echo "graph tests rc $? s $(( $(date +%s) - t0 ))"; grep -E "PASSED|FAILED|ERROR| passed| failed" "$OUT/test_graphs_gpu.txt" | cut -c1-160 | tail -30
# the TMA tiles launched from a thread that did not import the kernels (the twenty-seventh session's fix)
timeout 120 python3 -m pytest -q test/test_kernels_gpu.py -k tma_tiles_launch > "$OUT/test_tma_thread.txt" 2>&1
echo "tma thread test rc $? s $(( $(date +%s) - t0 ))"; tail -2 "$OUT/test_tma_thread.txt"
edge_until ${CALL_S:-560} "${MODES:-w4a4_kv8 bf16}"
true
