#!/bin/bash
# Fourteenth session, second run: bench/mma_rescale.py as committed (its fragment packing refactored into
# one function), then the edge proof at the product defaults with the process's whole footprint: device
# memory outside PyTorch's allocator and host RSS beside the GPU allocator's peak (a Jetson shares one DRAM).
source bench/device/autotune_carry.sh
if [ "${MMA:-1}" = "1" ]; then
  bash bench/device/mma_rescale.sh > /dev/null 2>&1; echo "mma_rescale rc $?"; grep "time vs i8" "$OUT/mma_rescale_h100.txt"
fi
GRAPH_MAX=${GRAPH_MAX:-2304} edge_round ${TAG:-footprint} 1024 ${MODES:-w4a4_kv8,bf16} ${EDGE_TIMEOUT:-480}
grep -A4 "shared-memory estimate" "$OUT/edge_${TAG:-footprint}_c1024.txt"
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
