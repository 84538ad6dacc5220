#!/bin/bash
# Fifteenth session: a large scale's slices reuse each W4A4 layer's int8 weight workspace (workspaces_kept) against
# every call unpacking its own (VAR_GEN_W4A4_KEEP_WORKSPACES=0), W4A4 + INT8 KV at 1024² with the product defaults,
# one after the other on one machine (the first run compiles).
source bench/device/autotune_carry.sh
for keep in 1 0; do
  VAR_GEN_W4A4_KEEP_WORKSPACES=$keep GRAPH_MAX=4096 edge_round keep$keep 1024 w4a4_kv8 ${EDGE_TIMEOUT:-420}
  python3 - "$OUT/edge_keep${keep}_c1024.json" <<'PY'
import json, sys
for mode, x in json.load(open(sys.argv[1])).items():
    for r in x.get("runs", []):
        m = r["memory_bytes"]
        print(mode, "total", round(r["latency_s"]["total"], 4), "peak", round(m["peak_allocated"] / 2**30, 3),
              "reserved", round(m["peak_reserved"] / 2**30, 3), [round(1e3 * t, 1) for t in r["latency_s"]["per_scale"]])
PY
done
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
