#!/bin/bash
# Twelfth session: scales 10 and 11 (1600 and 2304 tokens) graphed too (--graph-max-tokens 2304), which
# the A/B runs showed host-bound and noisy when eager; 1024-token slices, W4A4 + INT8 KV and bf16 side by side.
source bench/device/autotune_carry.sh
GRAPH_MAX=2304 edge_round twelfth_g2304 "${CHUNKS:-1024}" w4a4_kv8,bf16 ${EDGE_TIMEOUT:-280}
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
