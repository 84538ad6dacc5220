#!/bin/bash
# Twelfth session: the edge proof at 1024² with the qkv epilogue inside the W4A4 GEMM (slices CHUNKS,
# default 1024 then 2048), W4A4 + INT8 KV and bf16 side by side. Leaves the Triton cache in $OUT.
source bench/device/autotune_carry.sh
GRAPH_MAX=${GRAPH_MAX:-1024} edge_round ${TAG:-twelfth} "${CHUNKS:-1024 2048}" ${MODES:-w4a4_kv8,bf16} ${EDGE_TIMEOUT:-270}
autotune_save
