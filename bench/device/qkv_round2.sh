#!/bin/bash
# Tenth session, second run: the qkv-epilogue GPU test (warmed before its memory counts) and the edge
# proof at 1024-token slices, which ran out of memory in qkv_round.sh (now with the allocator's segments).
source bench/device/autotune_carry.sh
timeout 100 python3 -m pytest -q test/test_kernels_gpu.py -k "qkv" > "$OUT/test_qkv_gpu.txt" 2>&1
echo "kernel tests rc $?"; tail -3 "$OUT/test_qkv_gpu.txt"
for C in ${CHUNKS:-1024}; do
  timeout ${EDGE_TIMEOUT:-300} python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes ${MODES:-w4a4_kv8,bf16} \
    --cuda-graphs 1 --chunk-tokens $C --graph-max-tokens 1024 --json "$OUT/edge_qkv_c$C.json" > "$OUT/edge_qkv_c$C.txt" 2>&1
  echo "edge C=$C rc $?"; pkill -9 -f "[e]dge_proof.py --child"
  grep -E "^(w4a4|bf16)|rror" "$OUT/edge_qkv_c$C.txt" | head -5
done
autotune_save
