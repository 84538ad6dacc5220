#!/bin/bash
# Kernel 1's low-rank dot "bf16x2i" (1/λ read; the default since the thirty-third session) against "bf16x2" (divided
# per column, VAR_GEN_W4A4_LR_INV=0) and against the dot in the row pass (VAR_GEN_W4A4_LR_ROW_PASS=1): the quantizer's
# GPU tests, then bench/quant_ab.py (side by side in one process, with the default's kernel 1 without its low-rank
# dot); with EDGE=1 the 1024² edge proof with LR_ROW_PASS 0, then 1 (W4A4 + INT8 KV, resident). About 3 minutes, 4
# with EDGE=1; MS sets the row counts. (The thirty-third session's first run, at b54b9b7, also timed x loaded one
# group ahead, VAR_GEN_W4A4_QUANT_PREFETCH, since removed.)
source bench/device/autotune_carry.sh
build_extension
timeout 240 python3 -m pytest -q test/test_kernels_gpu.py -k "quantizer_launches_agree" > "$OUT/test_quant_variants.txt" 2>&1
echo "tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/test_quant_variants.txt"
timeout 300 python3 bench/quant_ab.py --ms ${MS:-512,1152,2048,4096} --json "$OUT/quant_ab.json" > "$OUT/quant_ab.txt" 2>&1
echo "ab rc $? s $(( $(date +%s) - t0 ))"; cat "$OUT/quant_ab.txt" | tail -20
if [ "${EDGE:-0}" = 1 ]; then
  for v in 0 1; do
    VAR_GEN_W4A4_LR_ROW_PASS=$v timeout -s ABRT -k 10 170 python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 \
      --modes w4a4_kv8 --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder int4 \
      --json "$OUT/edge_row_pass$v.json" > "$OUT/edge_row_pass$v.txt" 2>&1
    echo "edge LR_ROW_PASS=$v rc $? s $(( $(date +%s) - t0 ))"; grep -E "^w4a4|same prompt again" "$OUT/edge_row_pass$v.txt" | tail -2
  done
fi
true
