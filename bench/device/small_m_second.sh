#!/bin/bash
# The small-M CUDA kernel's second run (nineteenth session), after the first showed it correct but slow from 8 rows
# (the epilogue read L_up row by row from global memory) and crashing on a rejected call (a C++ exception through
# the binding): now the low-rank operands staged in shared memory, blocks of 4 or 8 warps, the launch timed at
# the first call, errors returned as messages. Build + integer check, GPU tests, the edge proof with the i8s path
# on and off (same machine), then the sweep with whatever time is left.
source bench/device/autotune_carry.sh
export TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext
mkdir -p "$TORCH_EXTENSIONS_DIR"
t0=$(date +%s)
python3 bench/small_m_exact_check.py 256,64,8,4,1 3584,3584,32,8,3 14336,3584,17,4,8 2>&1 | grep -v -i warn | tail -6
echo "build + check s $(( $(date +%s) - t0 ))"
timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q test/test_kernels_gpu.py -k "small_m or default_path_is_i8" \
  > "$OUT/test_small_m.txt" 2>&1
echo "tests rc $?"; grep -E "passed|failed|Error|assert" "$OUT/test_small_m.txt" | head -12
if [ "${EDGE:-1}" = 1 ]; then
  TE=int4 GRAPH_MAX=4096 edge_round small_m 1024 w4a4_kv8 ${EDGE_TIMEOUT:-120}
  VAR_GEN_W4A4_SMALL_M_MAX=0 TE=int4 GRAPH_MAX=4096 edge_round small_m_off 1024 w4a4_kv8 ${EDGE_TIMEOUT:-120}
fi
timeout ${SWEEP_TIMEOUT:-120} python3 bench/small_m_sweep.py --ms 2,8,32 --shapes 3584x10752,3584x3584,3584x14336,14336x3584 \
  --splits ${SPLITS:-1,2,4,8} --cold ${COLD:-1} --json "$OUT/small_m_sweep.json" > "$OUT/small_m_sweep.txt" 2>&1
echo "sweep rc $?"; grep -v -i warn "$OUT/small_m_sweep.txt" | cut -c1-260
[ "${SAVE:-1}" = 1 ] && autotune_save
