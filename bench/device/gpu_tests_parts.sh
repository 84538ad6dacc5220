#!/bin/bash
# The GPU tests in parts that each fit one device call: test/test_kernels_gpu.py (and test/test_graphs.py) is
# ~100 tests whose autotuning and compiling take longer than one call on a fresh machine (the twenty-third
# session's run of the whole file stopped at its 400 s limit after 26 tests, all passed).
#   PARTS (default 2), PART (1-based, default 1), FILES (default "test/test_kernels_gpu.py test/test_graphs.py"),
#   TEST_TIMEOUT (default 500): runs tests PART, PART+PARTS, PART+2·PARTS, ... of the collected order, so each part
#   mixes the file's slow and fast tests; results in $OUT/gpu_tests_part$PART.txt.
source bench/device/autotune_carry.sh
export TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext
mkdir -p "$TORCH_EXTENSIONS_DIR"
FILES=${FILES:-test/test_kernels_gpu.py test/test_graphs.py}
PARTS=${PARTS:-2} PART=${PART:-1}
python3 -m pytest -q --collect-only $FILES 2>/dev/null | grep "::" > "$OUT/collected.txt"
awk -v n="$PARTS" -v p="$PART" '(NR - p) % n == 0' "$OUT/collected.txt" > "$OUT/part.txt"
echo "part $PART of $PARTS: $(wc -l < "$OUT/part.txt") of $(wc -l < "$OUT/collected.txt") tests"
timeout ${TEST_TIMEOUT:-500} python3 -m pytest -q $(cat "$OUT/part.txt") --durations=8 > "$OUT/gpu_tests_part$PART.txt" 2>&1
echo "rc $?"; tail -14 "$OUT/gpu_tests_part$PART.txt"
[ "${SAVE:-0}" = 1 ] && autotune_save
true
