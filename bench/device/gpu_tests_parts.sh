#!/bin/bash
# The GPU tests in parts that each fit one device call: test/test_kernels_gpu.py (and test/test_graphs.py) is
# ~100 tests whose autotuning and compiling take longer than one call on a fresh machine (the twenty-third
# session's run of the whole file stopped at its 400 s limit after 26 tests, all passed).
#   PARTS (default 2), PART (1-based, default 1), FILES (default "test/test_kernels_gpu.py test/test_graphs.py"),
#   TEST_TIMEOUT (default 500): runs tests PART, PART+PARTS, PART+2·PARTS, ... of the collected order, so each part
#   mixes the file's slow and fast tests; results in $OUT/gpu_tests_part$PART.txt.
#   GPU_ONLY=1: every file's tests that CI skips for want of a GPU (test/conftest.py, VAR_GEN_GPU_TESTS_ONLY), FILES
#   default "test"; ONLY / DESELECT: a regular expression the test ids must match / must not match (grep -E), to run
#   the slowest few in a call of their own.
source bench/device/autotune_carry.sh
export TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext
mkdir -p "$TORCH_EXTENSIONS_DIR"
if [ "${GPU_ONLY:-0}" = 1 ]; then export VAR_GEN_GPU_TESTS_ONLY=1; FILES=${FILES:-test}; fi
FILES=${FILES:-test/test_kernels_gpu.py test/test_graphs.py}
PARTS=${PARTS:-2} PART=${PART:-1}
# (no test id is empty, so the default DESELECT, ^$, leaves every one in)
python3 -m pytest -q --collect-only $FILES 2>/dev/null | grep "::" | grep -E "${ONLY:-.}" | grep -v -E "${DESELECT:-^$}" \
  > "$OUT/collected.txt"
awk -v n="$PARTS" -v p="$PART" '(NR - p) % n == 0' "$OUT/collected.txt" > "$OUT/part.txt"
echo "part $PART of $PARTS: $(wc -l < "$OUT/part.txt") of $(wc -l < "$OUT/collected.txt") tests"
timeout ${TEST_TIMEOUT:-500} python3 -m pytest -q $(cat "$OUT/part.txt") --durations=8 > "$OUT/gpu_tests_part$PART.txt" 2>&1
echo "rc $?"; tail -14 "$OUT/gpu_tests_part$PART.txt"
[ "${SAVE:-0}" = 1 ] && autotune_save
true
