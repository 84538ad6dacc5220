#!/bin/bash
# The edge proof at 1024² with CFG, W4A4 + INT8 KV with the product's defaults, then bf16, with the small-M CUDA
# extension built first in its own step. Why: a fresh machine builds the extension inside the first edge run, and
# a run killed by its timeout mid-build leaves torch's build lock behind, on which every later process would wait.
# A run past its limit gets SIGABRT first, so that Python's faulthandler writes where it was (the twenty-second
# session's W4A4 run: its first generation waiting on the GPU); edge_proof.py's progress lines say which phase.
#   TESTS="pytest -k expression": GPU tests of test_kernels_gpu.py and test_graphs.py first (e.g. "small_m_quantizer"),
#            into $OUT/tests.txt
#   K1_OFF=1: after the default W4A4 run, one with the CUDA kernel 1 off (VAR_GEN_W4A4_QUANT_CUDA_MAX_M=0; on up to
#            8 rows by default: off in the twenty-second session after two edge runs "stalled", on again since the
#            twenty-third showed them to be a fresh machine's autotuning, docs/BENCHMARKS.md)
#   PDL_AB=1: after the default W4A4 run, one without the small-M GEMM as a programmatic dependent launch
#            (VAR_GEN_W4A4_PDL=0; on by default on sm_90 since the twenty-sixth session; kernels/w4a4_small_m.cu)
#   SWEEP=1: before the edge runs, bench/small_m_sweep.py at 2, 8, 16 and 32 rows (with its PDL columns on sm_90)
#   MODES (default "w4a4_kv8 bf16"), BUILD_TIMEOUT, TEST_TIMEOUT, EDGE_TIMEOUT, SWEEP_TIMEOUT
source bench/device/autotune_carry.sh
build_extension
if [ -n "${TESTS:-}" ]; then
  timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q test/test_kernels_gpu.py test/test_graphs.py -k "$TESTS" > "$OUT/tests.txt" 2>&1
  echo "tests rc $? s $(( $(date +%s) - t0 ))"; grep -E "passed|failed|^E " "$OUT/tests.txt" | head -20
fi
if [ "${SWEEP:-0}" = 1 ]; then
  timeout ${SWEEP_TIMEOUT:-240} python3 bench/small_m_sweep.py --ms 2,8,16,32 --splits "" --warps "" \
    --json "$OUT/small_m_sweep.json" > "$OUT/small_m_sweep.txt" 2>&1
  echo "sweep rc $? s $(( $(date +%s) - t0 ))"
fi
edge() {   # edge TAG MODE: one 1024² edge run under the 14 GiB cap
  timeout -s ABRT -k 10 ${EDGE_TIMEOUT:-240} python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes $2 \
    --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder int4 --json "$OUT/edge_$1.json" \
    > "$OUT/edge_$1.txt" 2>&1
  echo "edge $1 rc $? s $(( $(date +%s) - t0 ))"
  pkill -ABRT -f "[e]dge_proof.py --child"; sleep 3; pkill -9 -f "[e]dge_proof.py --child"
  grep -E "^(w4a4|bf16)|rror|^\[edge" "$OUT/edge_$1.txt" | tail -4
}
for mode in ${MODES:-w4a4_kv8 bf16}; do   # MODES=none: no edge run
  [ "$mode" = none ] && continue
  edge $mode $mode
  [ "$mode" = w4a4_kv8 ] && [ "${K1_OFF:-0}" = 1 ] && VAR_GEN_W4A4_QUANT_CUDA_MAX_M=0 edge w4a4_kv8_k1triton w4a4_kv8
  [ "$mode" = w4a4_kv8 ] && [ "${PDL_AB:-0}" = 1 ] && VAR_GEN_W4A4_PDL=0 edge w4a4_kv8_nopdl w4a4_kv8
done
echo "total s $(( $(date +%s) - t0 ))"
true
