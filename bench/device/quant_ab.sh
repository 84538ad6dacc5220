#!/bin/bash
# Kernel 1's variants side by side (bench/quant_ab.py, one process): the thirty-third session's "bf16x2i" low-rank dot
# in kernel 1, against "bf16x2" (VAR_GEN_W4A4_LR_INV=0) and the dot in the row pass (VAR_GEN_W4A4_LR_ROW_PASS, the
# default since the thirty-fourth session), after the quantizer's GPU tests; with EDGE=1 the 1024² edge proof (W4A4 +
# INT8 KV, resident) once per setting in EDGE_ENVS (space-separated NAME=VALUE; "-" for the defaults). About 7
# minutes without EDGE (then EDGE=1 TESTS=0 AB=0 in a second call), 45 s per edge run; MS sets the row counts. (The
# thirty-third session's first run, at b54b9b7, also timed x loaded one group ahead, VAR_GEN_W4A4_QUANT_PREFETCH; the
# thirty-fourth's, at 3552030, both passes' loops pipelined, VAR_GEN_W4A4_QUANT_STAGES; the forty-third's, at 1208285 and
# d14a8ca, the row pass's dot against kept operands, VAR_GEN_W4A4_LR_KEPT_PARTS; all since removed.) TEST_K chooses the
# GPU tests (a pytest -k expression), CHUNK the edge proof's activation slices (default 2048, the product's since the
# fortieth session; the earlier runs used 1024).
source bench/device/autotune_carry.sh
build_extension
if [ "${TESTS:-1}" = 1 ]; then
  timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q test/test_kernels_gpu.py -k "${TEST_K:-quantizer_launches_agree}" > "$OUT/test_quant_variants.txt" 2>&1
  echo "tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/test_quant_variants.txt"
fi
if [ "${AB:-1}" = 1 ]; then
  timeout 300 python3 bench/quant_ab.py --ms ${MS:-512,2048,4096} --json "$OUT/quant_ab.json" > "$OUT/quant_ab.txt" 2>&1
  echo "ab rc $? s $(( $(date +%s) - t0 ))"; cat "$OUT/quant_ab.txt" | tail -20
fi
if [ "${EDGE:-0}" = 1 ]; then
  for e in ${EDGE_ENVS:-- VAR_GEN_W4A4_LR_ROW_PASS=0}; do
    tag=${e//[^A-Za-z0-9]/_}; [ "$e" = - ] && tag=defaults
    env ${e/#-/DEFAULTS=1} timeout -s ABRT -k 10 170 python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 \
      --modes w4a4_kv8 --cuda-graphs 1 --chunk-tokens ${CHUNK:-2048} --graph-max-tokens 4096 --text-encoder int4 \
      --json "$OUT/edge_$tag.json" > "$OUT/edge_$tag.txt" 2>&1
    echo "edge $e rc $? s $(( $(date +%s) - t0 ))"; grep -E "^w4a4|same prompt again" "$OUT/edge_$tag.txt" | tail -2
  done
fi
autotune_picks_save
true
