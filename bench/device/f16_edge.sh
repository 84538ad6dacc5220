#!/bin/bash
# Kernels v5 end to end: the quantizer checks, then the 1024² edge proof with 4096-token activation
# slices (GEMM rows 8192 at the last scale, where the f16w path is the default) for W4A4 + INT8 KV and
# bf16 side by side. A step cut by its timeout leaves an orphaned child: killed after.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 60 python3 -m pytest -q --tb=short test/test_kernels_gpu.py -k "quantizer or f16_path" > "$OUT/test_quantizer.txt" 2>&1
tail -1 "$OUT/test_quantizer.txt"
timeout 470 python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes w4a4_kv8,bf16 --chunk-tokens 4096 \
  --json "$OUT/edge_proof_f16w_chunk4096_h100.json" > "$OUT/edge_proof_f16w_chunk4096_h100.txt" 2>&1
pkill -9 -f "[e]dge_proof.py --child"
grep -E "^(w4a4|bf16)|Error|error" "$OUT/edge_proof_f16w_chunk4096_h100.txt" | head -20
