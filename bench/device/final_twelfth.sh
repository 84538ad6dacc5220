#!/bin/bash
# Twelfth session, last run: the edge proof at the product defaults after the KV-block check before the
# decode (Generator: free_or_collect), autotuning picks carried: 1024-token slices, graphs up to 2304
# tokens, W4A4 + INT8 KV and bf16 side by side.
source bench/device/autotune_carry.sh
GRAPH_MAX=2304 edge_round twelfth_final 1024 w4a4_kv8,bf16 ${EDGE_TIMEOUT:-300}
