#!/bin/bash
# The i8 GEMM's SWAR code unpack (VAR_GEN_W4A4_SWAR, twenty-eighth session: checked in Triton's interpreter, its
# K loop 0.62-0.82x the default's instructions in the PTX, not yet run on a GPU) on the device: first its GPU test
# (the default path's bits on every 8B shape), then the W4A4 GEMM with and without it in two processes on one
# machine (the first compiles) at the rows the in-register i8 path serves (33-256; up to 32 the CUDA small-M kernel
# runs, from 257 the int8 workspace), then with EDGE=1 the 1024² edge proof with it on (the default's figure:
# graphs_then_edge.sh on the same machine). Both runs take the tiles the shipped table picks for the default.
#   TEST_TIMEOUT, GEMM_TIMEOUT, EDGE_TIMEOUT; MID=1 (below); AB=0 leaves out the test and the 72-256-row A/B (a
#   second call on the same machine: the device's 600 s per call do not hold all of it)
source bench/device/autotune_carry.sh
build_extension
if [ "${AB:-1}" = 1 ]; then
  timeout ${TEST_TIMEOUT:-200} python3 -m pytest -v test/test_kernels_gpu.py -k swar > "$OUT/test_swar.txt" 2>&1
  echo "swar test rc $?"; grep -E "PASSED|FAILED| passed| failed" "$OUT/test_swar.txt" | cut -c1-160
  gemm_run swar0 72,128,200,256 VAR_GEN_W4A4_SWAR=0
  gemm_run swar1 72,128,200,256 VAR_GEN_W4A4_SWAR=1
fi
# MID=1: at 288-800 rows the product reads an int8 workspace (i8w, from I8W_MIN_M = 257 rows: more bytes than bf16
# moves, unpack included); whether the in-register path with the SWAR unpack beats it there (its tiles tuned anew)
if [ "${MID:-0}" = 1 ]; then
  gemm_run mid_swar0 288,512,800 VAR_GEN_W4A4_SWAR=0 VAR_GEN_W4A4_I8W_MIN_M=257
  gemm_run mid_swar1 288,512,800 VAR_GEN_W4A4_SWAR=1 VAR_GEN_W4A4_I8W_MIN_M=1025
fi
if [ "${EDGE:-0}" = 1 ]; then
  VAR_GEN_W4A4_SWAR=1 timeout ${EDGE_TIMEOUT:-200} python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 \
    --modes w4a4_kv8 --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder int4 \
    --json "$OUT/edge_swar.json" > "$OUT/edge_swar.txt" 2>&1
  echo "edge swar rc $?"; pkill -9 -f "[e]dge_proof.py --child"; grep -E "^w4a4|rror" "$OUT/edge_swar.txt" | tail -3
fi
true
