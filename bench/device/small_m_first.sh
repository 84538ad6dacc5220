#!/bin/bash
# The CUDA C++ small-M W4A4 GEMM (kernels/w4a4_small_m.cu, path "i8s"), first run (nineteenth session): its build
# by torch.utils.cpp_extension (timed; the build directory comes back in $OUT/torch_ext to be carried as
# .tcache/torch_ext), an integer check of the kernel alone against the exact product it computes (which output
# elements are wrong, if any), its GPU tests, then bench/small_m_sweep.py at the generation's rows up to 32.
source bench/device/autotune_carry.sh
export TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext
mkdir -p "$TORCH_EXTENSIONS_DIR"
nvcc --version | tail -1
t0=$(date +%s)
# (It ran the kernel's first version, whose launch took 16·mt columns per block, with the cases (256, 64, 8, mt 2, 1),
# (3584, 3584, 2, 2, 1), (3584, 3584, 32, 4, 3), (14336, 3584, 17, 2, 8) inline; the check is now bench/small_m_exact_check.py.)
python3 bench/small_m_exact_check.py 256,64,8,4,1 3584,3584,2,4,1 3584,3584,32,4,3 14336,3584,17,4,8 2>&1 | grep -v -i warn | tail -6
echo "build + check s $(( $(date +%s) - t0 ))"
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q test/test_kernels_gpu.py -k "small_m or default_path_is_i8" \
  > "$OUT/test_small_m.txt" 2>&1
echo "tests rc $?"; grep -E "passed|failed|Error|assert" "$OUT/test_small_m.txt" | head -12
timeout ${SWEEP_TIMEOUT:-240} python3 bench/small_m_sweep.py --ms ${MS:-2,8,32} --json "$OUT/small_m_sweep.json" \
  > "$OUT/small_m_sweep.txt" 2>&1
echo "sweep rc $?"; grep -v -i warn "$OUT/small_m_sweep.txt" | cut -c1-240
mkdir -p "$OUT/torch_ext" && cp -r "$TORCH_EXTENSIONS_DIR"/. "$OUT/torch_ext/" && find "$OUT/torch_ext" -name "*.o" -delete
du -sh "$OUT/torch_ext"
autotune_save
