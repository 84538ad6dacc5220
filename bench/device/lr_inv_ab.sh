#!/bin/bash
# VAR_GEN_W4A4_LR_INV (thirty-second session: built and checked on the CPU, in Triton's interpreter and compiled for
# sm_90 / sm_87, not yet run on a GPU): kernel 1's "bf16x2i" low-rank dot, 1/λ read instead of divided per column.
# The quantizer's GPU test with it, then bench/lr_inv_ab.py (off and on, side by side in one process); with
# EDGE=1 the 1024² edge proof with it off then on (W4A4 + INT8 KV, resident). About 3 minutes, 6 with EDGE=1.
source bench/device/autotune_carry.sh
build_extension
timeout 240 python3 -m pytest -q test/test_kernels_gpu.py -k "quantizer_launches_agree" > "$OUT/test_lr_inv.txt" 2>&1
echo "tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/test_lr_inv.txt"
timeout 240 python3 bench/lr_inv_ab.py --json "$OUT/lr_inv_ab.json" > "$OUT/lr_inv_ab.txt" 2>&1
echo "ab rc $? s $(( $(date +%s) - t0 ))"; cat "$OUT/lr_inv_ab.txt" | tail -20
if [ "${EDGE:-0}" = 1 ]; then
  for v in 0 1; do
    VAR_GEN_W4A4_LR_INV=$v timeout -s ABRT -k 10 170 python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 \
      --modes w4a4_kv8 --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder int4 \
      --json "$OUT/edge_lr_inv$v.json" > "$OUT/edge_lr_inv$v.txt" 2>&1
    echo "edge LR_INV=$v rc $? s $(( $(date +%s) - t0 ))"; grep -E "^w4a4|same prompt again" "$OUT/edge_lr_inv$v.txt" | tail -2
  done
fi
true
