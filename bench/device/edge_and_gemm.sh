#!/bin/bash
# Device run A: activation-quantization kernel launch/precision variants, then the edge proof with the
# product defaults (activation chunking on) at three resolutions, both modes side by side.
export PYTHONUNBUFFERED=1
OUT=${OUT:-.}
python3 bench/gemm_variants.py --quantize-only --shapes 3584x10752,14336x3584 --ms 2048,8192 \
    --json "$OUT/quantize_variants_h100.json" 2>&1 | grep -v Warning | cut -c1-400
python3 bench/edge_proof.py --cap-gib 14 --modes w4a4_kv8,bf16 --text-encoder int8 \
    --resolutions 1024x1024,512x512,768x1344 --repeats 2 --json "$OUT/edge_proof_h100.json" 2>&1 | tail -10
