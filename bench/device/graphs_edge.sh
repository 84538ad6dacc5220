#!/bin/bash
# CUDA graphs per scale: GPU tests (replay == eager, bf16 and W4A4 + INT8 KV), then the edge proof at
# 1024²: graphs on (scales <= 1024 tokens) for W4A4 + INT8 KV and bf16, then W4A4 + INT8 KV with graphs
# off. A step cut by its timeout leaves an orphaned child: killed before the next.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
clean() { pkill -9 -f "[e]dge_proof.py --child"; sleep 1; }
timeout 110 python3 -m pytest -q -x --tb=short test/test_graphs.py > "$OUT/test_graphs_gpu.txt" 2>&1
grep -E "Error|error|assert|passed|failed" "$OUT/test_graphs_gpu.txt" | head -12
E="python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14"
timeout 330 $E --modes w4a4_kv8,bf16 --cuda-graphs 1 --json "$OUT/edge_proof_graphs_h100.json" 2>&1 | grep -E "^(w4a4|bf16)" ; clean
timeout 90 $E --modes w4a4_kv8 --cuda-graphs 0 --json "$OUT/edge_proof_nographs_h100.json" 2>&1 | grep -E "^w4a4" ; clean
python3 -c "
import json
for f in ('graphs', 'nographs'):
    try: d = json.load(open('$OUT/edge_proof_%s_h100.json' % f))
    except Exception as e: print(f, e); continue
    for m, v in d.items():
        for r in ([v['uncapped']] if 'uncapped' in v else []) + v.get('runs', []):
            if r.get('fits', True): print(f, m, r.get('cuda_graphs'), [round(x, 3) for x in r['latency_s']['per_scale']])
"
