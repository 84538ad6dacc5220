#!/bin/bash
# Kernel 1 without divisions (VAR_GEN_W4A4_LR_SPLIT_X=1: x̂ split into two bf16 parts for the low-rank dot, 1/λ
# read from inv_smooth) against the default, after its GPU test (every quantizer launch: the same codes and scales,
# the low-rank input within 2e-5 of float64): each block Linear's stages (kernel 1 with its row pass, the GEMM) at
# the product's rows, in two processes on one machine (the first compiles). Carry .tcache when there is one.
source bench/device/autotune_carry.sh
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q test/test_kernels_gpu.py -k "quantizer_launches_agree" > "$OUT/test_gpu_kernel1_nodiv.txt" 2>&1
echo "quantizer test rc $?"; tail -3 "$OUT/test_gpu_kernel1_nodiv.txt" | cut -c1-300
for f in 0 1; do
  VAR_GEN_W4A4_LR_SPLIT_X=$f timeout ${STAGES_TIMEOUT:-200} python3 bench/w4a4_stages.py --ms ${MS:-2,32,128,512,2048,8192} \
    --json "$OUT/w4a4_stages_nodiv$f.json" > "$OUT/w4a4_stages_nodiv$f.txt" 2>&1
  echo "LR_SPLIT_X=$f rc $?"; grep -vi warn "$OUT/w4a4_stages_nodiv$f.txt" | tail -24 | cut -c1-160
done
autotune_save
