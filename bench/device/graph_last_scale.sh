#!/bin/bash
# Fifteenth session: every scale graph-replayed (graph_max_tokens 4096 at 1024²) with the graphs in one shared
# pool, so the last scale's attention takes the graph-only dequantize + SDPA path and its launches leave the host;
# both modes in one run (TAG, GRAPH_MAX and POOL settable). Then the autotune picks and compiled kernels for the next run.
source bench/device/autotune_carry.sh
export VAR_GEN_GRAPH_POOL=${POOL:-shared}
GRAPH_MAX=${GRAPH_MAX:-4096} edge_round ${TAG:-g4096_shared} 1024 ${MODES:-w4a4_kv8,bf16} ${EDGE_TIMEOUT:-540}
grep -A3 "shared-memory estimate" "$OUT/edge_${TAG:-g4096_shared}_c1024.txt"
grep -E "per scale|scale ms" -A2 "$OUT/edge_${TAG:-g4096_shared}_c1024.txt" | head -8
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
python3 - "$OUT/edge_${TAG:-g4096_shared}_c1024.json" <<'PY'
import json, sys
for mode, x in json.load(open(sys.argv[1])).items():
    for r in x.get("runs", []) + ([x["uncapped"]] if "uncapped" in x else []):   # bf16: OOM under the cap
        if "latency_s" in r:
            lat = r["latency_s"]
            print(mode, "total", round(lat["total"], 4), "per scale ms", [round(1e3 * t, 1) for t in lat["per_scale"]])
PY
