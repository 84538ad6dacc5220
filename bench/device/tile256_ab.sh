#!/bin/bash
# The i8 GEMM's 256 x 64 swapped tile with two warpgroups (twenty-ninth session: added to the tuner's candidates, not
# yet run on a GPU; the H100 table ships the earlier picks, so the product on the H100 does not try it) on one machine:
# its GPU correctness test (every candidate against the reference), then the GEMM at 72-512 rows with the shipped
# picks against a fresh tuning over every candidate (VAR_GEN_TUNED_PICKS=0), and the in-register path with fresh
# tunings serving 288-512 rows too (VAR_GEN_W4A4_I8W_MIN_M=513). If the fresh picks win, the table is made anew
# (kernels/tuned_picks.py) from this run's autotune.tgz.   TEST_TIMEOUT, GEMM_TIMEOUT
export COMMITTED_PICKS=0 GEMM_TIMEOUT=${GEMM_TIMEOUT:-300}     # the fresh tunings: about 8 s per (bucket, N, K)
source bench/device/autotune_carry.sh
build_extension
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -v test/test_kernels_gpu.py -k "every_gemm_variant and False" \
  > "$OUT/test_variants.txt" 2>&1
echo "variant test rc $?"; grep -E "FAILED|ERROR| passed| failed" "$OUT/test_variants.txt" | cut -c1-200 | tail -4
gemm_run shipped 72,128,200,256,288,512
gemm_run fresh 72,128,200,256,288,512 VAR_GEN_TUNED_PICKS=0
gemm_run fresh_i8 288,512 VAR_GEN_TUNED_PICKS=0 VAR_GEN_W4A4_I8W_MIN_M=513
autotune_save
true
