#!/bin/bash
# Run in the thirtieth session (docs/results/tile256_*_thirtieth_h100.*): the tile lost on every key, 1.08-2.3x the
# best pick's time, and was taken out of the candidates; kept as the command behind those figures.
# The i8 GEMM's 256 x 64 swapped tile with two warpgroups (twenty-ninth session: added to the tuner's candidates, not
# yet run on a GPU; the H100 table ships the earlier picks, so the product on the H100 does not try it) on one machine:
# its GPU correctness test (every candidate against the reference), then the GEMM at 72-512 rows with the shipped
# picks against a fresh tuning over every candidate (VAR_GEN_TUNED_PICKS=0), and the in-register path with fresh
# tunings serving 288-512 rows too (VAR_GEN_W4A4_I8W_MIN_M=513). If the fresh picks win, the table is made anew
# (kernels/tuned_picks.py) from this run's autotune.tgz. EDGE=1 (a second call on the same machine, with AB=0) runs
# the 1024² edge proof with the shipped picks and with fresh ones (the GEMM runs' tunings stay in Triton's cache;
# the keys they did not cover are tuned in the proof's warm-up).   TEST_TIMEOUT, GEMM_TIMEOUT, EDGE_TIMEOUT
export COMMITTED_PICKS=0 GEMM_TIMEOUT=${GEMM_TIMEOUT:-300}     # the fresh tunings: about 8 s per (bucket, N, K)
source bench/device/autotune_carry.sh
build_extension
if [ "${AB:-1}" = 1 ]; then
  timeout ${TEST_TIMEOUT:-200} python3 -m pytest -v test/test_kernels_gpu.py -k "every_gemm_variant and False" \
    > "$OUT/test_variants.txt" 2>&1
  echo "variant test rc $?"; grep -E "FAILED|ERROR| passed| failed" "$OUT/test_variants.txt" | cut -c1-200 | tail -4
  gemm_run shipped 72,128,200,256,288,512
  gemm_run fresh 72,128,200,256,288,512 VAR_GEN_TUNED_PICKS=0
  gemm_run fresh_i8 288,512 VAR_GEN_TUNED_PICKS=0 VAR_GEN_W4A4_I8W_MIN_M=513
  autotune_save
fi
if [ "${EDGE:-0}" = 1 ]; then
  for picks in auto 0; do
    VAR_GEN_TUNED_PICKS=$picks timeout ${EDGE_TIMEOUT:-240} python3 bench/edge_proof.py --resolutions 1024x1024 \
      --cap-gib 14 --modes w4a4_kv8 --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder int4 \
      --json "$OUT/edge_picks_$picks.json" > "$OUT/edge_picks_$picks.txt" 2>&1
    echo "edge picks=$picks rc $?"; pkill -9 -f "[e]dge_proof.py --child"; grep -E "^w4a4|rror" "$OUT/edge_picks_$picks.txt" | tail -2
  done
fi
true
