#!/bin/bash
# Kernels v5 end to end with CUDA graphs per scale (<= 1024 tokens) on: the 1024² edge proof with
# 4096-token activation slices, W4A4 + INT8 KV and bf16 side by side (checks the W4A4 capture too);
# --graph-keep-kv 1 (the default since the run that found every generation recaptured: see BENCHMARKS).
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 540 python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes w4a4_kv8,bf16 --chunk-tokens 4096 --graph-keep-kv 1 \
  --cuda-graphs 1 --json "$OUT/edge_proof_f16w_graphs_keptkv_h100.json" > "$OUT/edge_proof_f16w_graphs_keptkv_h100.txt" 2>&1
pkill -9 -f "[e]dge_proof.py --child"
grep -E "^(w4a4|bf16)|Error|error|Warn|warn" "$OUT/edge_proof_f16w_graphs_keptkv_h100.txt" | head -20
