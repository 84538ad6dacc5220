#!/bin/bash
# The SWAR code unpack as the default (twenty-ninth session), on one machine: the GEMM's GPU tests that cover the
# in-register i8 path (every 8B shape and row count through the default dispatch, every tile, split K, the shipped
# picks, the SWAR bits against the byte unpack), then the 1024² edge proof in both modes with what time is left.
#   TEST_TIMEOUT (default 280), CALL_S (default 520), COMMITTED_PICKS=0 as in autotune_carry.sh
source bench/device/autotune_carry.sh
build_extension
timeout ${TEST_TIMEOUT:-280} python3 -m pytest -v test/test_kernels_gpu.py --durations=6 -k "swar or \
w4a4_kernel_matches_reference or every_gemm_variant or split_k_is_deterministic or products_calls_meet" \
  > "$OUT/test_swar_default.txt" 2>&1
echo "tests rc $? s $(( $(date +%s) - t0 ))"; grep -E "FAILED|ERROR| passed| failed" "$OUT/test_swar_default.txt" | cut -c1-160 | tail -12
edge_until ${CALL_S:-520} "w4a4_kv8 bf16"
true
