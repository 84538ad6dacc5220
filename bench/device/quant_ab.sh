#!/bin/bash
# Kernel 1's variants of the thirty-second session (built and checked on the CPU, in Triton's interpreter and compiled
# for sm_90 / sm_87, not yet run on a GPU): VAR_GEN_W4A4_LR_INV (the "bf16x2i" low-rank dot, 1/λ read instead of
# divided per column) and VAR_GEN_W4A4_QUANT_PREFETCH (x loaded one group ahead). The quantizer's GPU tests, then
# bench/quant_ab.py (all four side by side in one process); with EDGE=1 the 1024² edge proof with both off, then
# both on (W4A4 + INT8 KV, resident). About 3 minutes, 6 with EDGE=1.
source bench/device/autotune_carry.sh
build_extension
timeout 240 python3 -m pytest -q test/test_kernels_gpu.py -k "quantizer_launches_agree" > "$OUT/test_quant_variants.txt" 2>&1
echo "tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/test_quant_variants.txt"
timeout 300 python3 bench/quant_ab.py --json "$OUT/quant_ab.json" > "$OUT/quant_ab.txt" 2>&1
echo "ab rc $? s $(( $(date +%s) - t0 ))"; cat "$OUT/quant_ab.txt" | tail -20
if [ "${EDGE:-0}" = 1 ]; then
  for v in 0 1; do
    VAR_GEN_W4A4_LR_INV=$v VAR_GEN_W4A4_QUANT_PREFETCH=$v timeout -s ABRT -k 10 170 python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 \
      --modes w4a4_kv8 --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder int4 \
      --json "$OUT/edge_quant$v.json" > "$OUT/edge_quant$v.txt" 2>&1
    echo "edge variants=$v rc $? s $(( $(date +%s) - t0 ))"; grep -E "^w4a4|same prompt again" "$OUT/edge_quant$v.txt" | tail -2
  done
fi
true
