#!/bin/bash
# Ninth session, last run: the new GPU tests (GELU epilogue, attention written over its queries, the
# attention's unmasked loop), the edge proof at the product's 512-token slices with bf16 beside it,
# then the CUDA-graph tests.
source bench/device/autotune_carry.sh
timeout 150 python3 -m pytest -q test/test_kernels_gpu.py -k "gelu or attention or attend or store or direct or status or default_path" \
  > "$OUT/test_kernels_gpu_ninth.txt" 2>&1; echo "kernel tests rc $?"; tail -3 "$OUT/test_kernels_gpu_ninth.txt"
timeout 170 python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes w4a4_kv8,bf16 --cuda-graphs 1 \
  --json "$OUT/edge_fused_c512.json" > "$OUT/edge_fused_c512.txt" 2>&1
echo "edge rc $?"; pkill -9 -f "[e]dge_proof.py --child"; grep -E "^(w4a4|bf16)|rror" "$OUT/edge_fused_c512.txt" | head -5
timeout 150 python3 -m pytest -q test/test_graphs.py -k gpu > "$OUT/test_graphs_gpu_ninth.txt" 2>&1
echo "graph tests rc $?"; tail -3 "$OUT/test_graphs_gpu_ninth.txt"
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
