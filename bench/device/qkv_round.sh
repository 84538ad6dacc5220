#!/bin/bash
# Tenth session: the fused qkv epilogue (kernels/qkv_rope_triton.py). Its GPU test and benchmark, then
# the edge proof at 1024² with slices of 1024 and 512 tokens (graphs up to 1024 tokens), W4A4 + INT8 KV
# and bf16 side by side.
source bench/device/autotune_carry.sh
timeout 120 python3 -m pytest -q test/test_kernels_gpu.py -k "qkv or attend or status" > "$OUT/test_qkv_gpu.txt" 2>&1
echo "kernel tests rc $?"; tail -4 "$OUT/test_qkv_gpu.txt"
timeout 90 python3 bench/kernels.py --only qkv --json "$OUT/qkv_epilogue_h100.json" > "$OUT/qkv_epilogue_h100.txt" 2>&1
echo "qkv bench rc $?"; cut -c1-400 "$OUT/qkv_epilogue_h100.txt"
for C in ${CHUNKS:-1024 512}; do
  timeout ${EDGE_TIMEOUT:-170} python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes w4a4_kv8,bf16 \
    --cuda-graphs 1 --chunk-tokens $C --graph-max-tokens 1024 --json "$OUT/edge_qkv_c$C.json" > "$OUT/edge_qkv_c$C.txt" 2>&1
  echo "edge C=$C rc $?"; pkill -9 -f "[e]dge_proof.py --child"
  grep -E "^(w4a4|bf16)|rror" "$OUT/edge_qkv_c$C.txt" | head -5
done
autotune_save
