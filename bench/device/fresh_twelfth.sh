#!/bin/bash
# Twelfth session: the edge proof on a machine with no Triton cache (nothing carried: every kernel tuned and
# compiled during the first warm-up generation, as on a robot's first start), product defaults (1024-token
# slices, graphs up to 2304 tokens), W4A4 + INT8 KV: the tenth session's first-run OOM re-making the KV
# block after the decode is now retried after a garbage collection (Generator._remake_kept_caches).
source bench/device/autotune_carry.sh
GRAPH_MAX=2304 edge_round twelfth_fresh 1024 w4a4_kv8 ${EDGE_TIMEOUT:-560}
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
