#!/bin/bash
# Twenty-first session, first call: the CUDA kernel 1 for M <= 32 (kernels/w4a4_quantize_small_m.cu) on its first
# GPU. Build + GPU tests of both small-M CUDA kernels (the quantizer against the Triton kernel 1 and the reference,
# the GEMM through the dispatch with it on (VAR_GEN_W4A4_QUANT_CUDA_MAX_M=32)), then the sweep: the whole product on the i8s
# and Triton i8 paths with each kernel 1, both kernel 1s alone, bf16 cuBLAS (bench/small_m_sweep.py).
source bench/device/autotune_carry.sh
export TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext
mkdir -p "$TORCH_EXTENSIONS_DIR"
t0=$(date +%s)
VAR_GEN_W4A4_QUANT_CUDA_MAX_M=${K1:-32} timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q test/test_kernels_gpu.py \
  -k "${TESTS:-small_m or default_path_is_i8}" > "$OUT/test_quant_small_m.txt" 2>&1
echo "tests rc $? s $(( $(date +%s) - t0 ))"; grep -E "passed|failed|Error|assert|rel" "$OUT/test_quant_small_m.txt" | head -30
timeout ${SWEEP_TIMEOUT:-200} python3 bench/small_m_sweep.py --ms ${MS:-2,8,16,32} --cold ${COLD:-0} --splits "" --warps "" \
  --shapes ${SHAPES:-3584x10752,3584x3584,3584x14336,14336x3584} --json "$OUT/small_m_sweep.json" > "$OUT/small_m_sweep.txt" 2>&1
echo "sweep rc $? s $(( $(date +%s) - t0 ))"; grep -v -i warn "$OUT/small_m_sweep.txt" | cut -c1-300
[ "${SAVE:-0}" = 1 ] && autotune_save
echo "total s $(( $(date +%s) - t0 ))"
