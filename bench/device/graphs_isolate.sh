#!/bin/bash
# Why do the eager large scales slow down with CUDA graphs on? bf16 only, 1024²: graphs off, caches kept
# but nothing captured, graphs on (uncapped, so no allocator pressure from the cap).
export PYTHONUNBUFFERED=1
for cfg in "0 1024" "1 0" "1 1024"; do
  set -- $cfg
  timeout 150 python3 bench/edge_proof.py --modes bf16 --resolutions 1024x1024 --cap-gib 80 --cuda-graphs $1 \
    --graph-max-tokens $2 --json "$OUT/isolate_g$1_t$2.json" 2>&1 | grep -E "^bf16 " | head -2
  python3 -c "import json;d=json.load(open('$OUT/isolate_g$1_t$2.json'))['bf16']['runs'][0];print('g=$1 t=$2',[round(x,3) for x in d['latency_s']['per_scale']])"
done
