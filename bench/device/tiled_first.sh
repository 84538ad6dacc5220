#!/bin/bash
# Twentieth session, first call: the tiled CUDA C++ W4A4 GEMM (kernels/w4a4_tiled.cu, path i8t) on its first GPU.
# Build + GPU tests of both CUDA kernels (dispatch with VAR_GEN_W4A4_TILED_MAX_M=288 so the path choice is tested),
# then the sweep against the Triton path, the small-M kernel and bf16 (bench/tiled_sweep.py).
source bench/device/autotune_carry.sh
export TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext
mkdir -p "$TORCH_EXTENSIONS_DIR"
t0=$(date +%s)
VAR_GEN_W4A4_TILED_MAX_M=288 timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -x test/test_kernels_gpu.py \
  -k "${TESTS:-tiled or small_m or default_path_is_i8}" > "$OUT/test_tiled.txt" 2>&1
echo "tests rc $? s $(( $(date +%s) - t0 ))"; grep -E "passed|failed|Error|assert|rel" "$OUT/test_tiled.txt" | head -20
timeout ${SWEEP_TIMEOUT:-240} python3 bench/tiled_sweep.py --ms ${MS:-2,8,32,72,128,288,512} --cold ${COLD:-1} \
  --shapes ${SHAPES:-3584x10752,3584x3584,3584x14336,14336x3584} --json "$OUT/tiled_sweep.json" > "$OUT/tiled_sweep.txt" 2>&1
echo "sweep rc $? s $(( $(date +%s) - t0 ))"; grep -v -i warn "$OUT/tiled_sweep.txt" | cut -c1-330
[ "${SAVE:-0}" = 1 ] && autotune_save
echo "total s $(( $(date +%s) - t0 ))"
