#!/bin/bash
# For the session after the eighteenth. One call (~5 min with .tcache carried; leave the default bundle's two
# largest files out of the tree for the call if tree + cache exceed the tool's 64 MiB):
# 1. kernel 1's defaults at one row block: the K splits capped at 56 (MAX_SPLITS; 14336 -> 3584 at <= 64 rows
#    went from 112 splits to 56), the stage sweep with 28 / 56 / 112 forced beside the default;
# 2. the workspace GEMM (i8w) from 72 rows instead of 257 (VAR_GEN_W4A4_I8W_MIN_M), the GEMM table at the small
#    scales' rows, in two processes (the eighteenth session's stage split suggests it for 3584² only);
# 3. the edge proof, W4A4 + INT8 KV and bf16 on the same machine (the ratio with both changes' defaults).
source bench/device/autotune_carry.sh
timeout ${TEST_TIMEOUT:-120} python3 -m pytest -q test/test_kernels_gpu.py -k "quantizer_launches_agree or w4a4_kernel_matches_reference" \
  > "$OUT/test_gpu_nineteenth.txt" 2>&1
echo "tests rc $?"; tail -1 "$OUT/test_gpu_nineteenth.txt" | cut -c1-200
timeout ${STAGES_TIMEOUT:-100} python3 bench/w4a4_stages.py --ms 2,32,72 --splits 28,56,112 \
  --json "$OUT/w4a4_stages_splits.json" > "$OUT/w4a4_stages_splits.txt" 2>&1
echo "stages rc $?"; grep -vi warn "$OUT/w4a4_stages_splits.txt" | grep -A1 "^ *14336" | cut -c1-170
for m in 257 72; do
  VAR_GEN_W4A4_I8W_MIN_M=$m timeout ${GEMM_TIMEOUT:-100} python3 bench/kernel_bench.py --only gemm \
    --shapes 3584x10752,3584x3584,3584x14336,14336x3584 --ms 72,128,256 --no-paths \
    --json "$OUT/gemm_i8w_from$m.json" > "$OUT/gemm_i8w_from$m.txt" 2>&1
  echo "i8w from $m rc $?"; grep -vi warn "$OUT/gemm_i8w_from$m.txt" | grep -E "^ +[0-9]+ +[0-9]+ +[0-9]+ \|" | cut -c1-75
done
TE=int4 GRAPH_MAX=4096 edge_round splits 1024 w4a4_kv8 ${EDGE_TIMEOUT:-130}
TE=int4 GRAPH_MAX=4096 edge_round splits_bf16 1024 bf16 ${EDGE_TIMEOUT:-130}
ls "$OUT"
