#!/bin/bash
# Twentieth session, second call: the tiled kernel with its epilogue operands copied by cp.async. GPU tests, the
# sweep at the middle scales' rows, then the edge proof with the tiled kernel up to TILED rows and without it.
t0=$(date +%s)
TESTS="${TESTS:-tiled or default_path_is_i8}" COLD=0 MS=${MS:-8,32,72,128,288} SWEEP_TIMEOUT=${SWEEP_TIMEOUT:-200} \
  bash bench/device/tiled_first.sh
[ "${EDGE:-1}" = 1 ] && AB=1 BF16=0 TILED=${TILED:-128} EDGE_TIMEOUT=${EDGE_TIMEOUT:-120} bash bench/device/tiled_edge.sh
echo "all s $(( $(date +%s) - t0 ))"
