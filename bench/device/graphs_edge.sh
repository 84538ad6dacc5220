#!/bin/bash
# CUDA graphs per scale: GPU tests (replay == eager, bf16 and W4A4 + INT8 KV), then the edge proof at
# 1024²: graphs on for scales <= 1024 tokens (W4A4 + INT8 KV and bf16), W4A4 + INT8 KV with graphs off,
# and with every scale graphed. A step cut by its timeout leaves an orphaned child: killed before the next.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
clean() { pkill -9 -f "[e]dge_proof.py --child"; sleep 1; }
timeout 90 python3 -m pytest -q test/test_graphs.py 2>&1 | tail -2
E="python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14"
timeout 300 $E --modes w4a4_kv8,bf16 --json "$OUT/edge_proof_graphs_h100.json" 2>&1 | grep -E "^(w4a4|bf16)" ; clean
timeout 90 $E --modes w4a4_kv8 --cuda-graphs 0 --json "$OUT/edge_proof_nographs_h100.json" 2>&1 | grep -E "^w4a4" ; clean
timeout 90 $E --modes w4a4_kv8 --graph-max-tokens 4096 --json "$OUT/edge_proof_graphs_all_h100.json" 2>&1 | grep -E "^w4a4" ; clean
