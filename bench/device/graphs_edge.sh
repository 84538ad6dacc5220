#!/bin/bash
# CUDA graphs per scale: GPU tests (replay == eager, bf16 and W4A4 + INT8 KV), then the edge proof at
# 1024² with graphs (W4A4 + INT8 KV and bf16 side by side), then W4A4 + INT8 KV without graphs.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 120 python3 -m pytest -q test/test_graphs.py 2>&1 | tail -4
timeout 330 python3 bench/edge_proof.py --modes w4a4_kv8,bf16 --resolutions 1024x1024 --cap-gib 14 \
  --json "$OUT/edge_proof_graphs_h100.json" 2>&1 | grep -v Loading | tail -8
timeout 140 python3 bench/edge_proof.py --modes w4a4_kv8 --resolutions 1024x1024 --cap-gib 14 --cuda-graphs 0 \
  --json "$OUT/edge_proof_nographs_h100.json" 2>&1 | grep -v Loading | tail -4
