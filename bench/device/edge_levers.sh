#!/bin/bash
# Device run B: the edge proof's memory levers one at a time at 1024² (W4A4 + INT8 KV): activation
# chunking off, and the text encoder on the CPU instead of INT8 on the GPU.
export PYTHONUNBUFFERED=1
OUT=${OUT:-.}
python3 bench/edge_proof.py --cap-gib 14 --modes w4a4_kv8 --text-encoder int8 --resolutions 1024x1024 \
    --repeats 2 --chunk-tokens 0 --json "$OUT/edge_proof_unchunked_h100.json" 2>&1 | tail -4
python3 bench/edge_proof.py --cap-gib 14 --modes w4a4_kv8 --text-encoder cpu --resolutions 1024x1024 \
    --repeats 2 --json "$OUT/edge_proof_te_cpu_h100.json" 2>&1 | tail -4
