#!/bin/bash
# Eighteenth session: kernel 1's new small-row launch (the q·m layouts in 16-row blocks of 4 warps up to 288 rows,
# without divisions there: QUANT_16ROW_MAX_M, LR_SPLIT_X "auto"), measured on one machine: its GPU test, each
# block Linear's stages at the product's small rows (against the launches it replaced, the BM=64/W=8 column),
# then the edge proof, W4A4 + INT8 KV and (BF16=1, the default) bf16 side by side, the latency ratio on this GPU.
# Carry .tcache.
source bench/device/autotune_carry.sh
timeout ${TEST_TIMEOUT:-60} python3 -m pytest -q test/test_kernels_gpu.py -k "quantizer_launches_agree" \
  > "$OUT/test_gpu_eighteenth.txt" 2>&1
echo "quantizer test rc $?"; tail -1 "$OUT/test_gpu_eighteenth.txt" | cut -c1-200
timeout ${STAGES_TIMEOUT:-120} python3 bench/w4a4_stages.py --ms ${MS:-2,72,128,288,512} --splits G//2 \
  --json "$OUT/w4a4_stages_launch.json" > "$OUT/w4a4_stages_launch.txt" 2>&1
echo "stages rc $?"; grep -vi warn "$OUT/w4a4_stages_launch.txt" | grep "M=" | cut -c1-170
TE=int4 GRAPH_MAX=4096 edge_round launch 1024 w4a4_kv8 ${EDGE_TIMEOUT:-150}
[ "${BF16:-1}" = 1 ] && TE=int4 GRAPH_MAX=4096 edge_round launch_bf16 1024 bf16 ${EDGE_TIMEOUT:-150}
ls "$OUT"      # at most 7 files: no archive needed
