#!/bin/bash
# Result (fortieth session, H100, at 4a968cb; docs/results/split_*_fortieth_h100.*): offered the split tiles, the tuner
# picked none of them on any of the 25 keys; the split run's times were 0.96-1.17x the default's (median 1.00), the
# differences from tuning each bucket at another row count. The tiles and VAR_GEN_W4A4_SPLIT_TMA were taken out after.
# Fortieth session: split-K for the workspace (i8w) GEMM from 257 rows. The i8w tiles alone underfill the H100 there
# (3584² at 512 rows: 56 tiles of 128 x 256, 112 of 128 x 128, on 132 SMs), and the tuner's split tiles stopped at 256
# rows (SPLIT_MAX_M) and were 4-warp 64 x 128 ones without TMA or the 128-wide K step. The same forward twice, each in
# its own process: the default (the shipped picks), then VAR_GEN_W4A4_SPLIT_TMA=1 (128 x 128 and 128 x 256 TMA tiles
# with K split 2 or 4, KSTEP 128) with VAR_GEN_W4A4_SPLIT_MAX_M=2048 and the tuner choosing (no shipped picks), at the
# row counts of a 1024² generation from its middle scales on (288 and 512 rows: bucket 512; 800: 1024; 1152 and the
# 1024-token slices of the last four scales, 2048: bucket 2048). The split run goes from the most rows down, so that
# its tuner chooses each bucket's tile at the bucket's top (2048, where the product's last scales run; the shipped
# picks were tuned at the first row count a generation meets in the bucket, 1152 there): its picks (autotune.tgz) say
# whether a gain is the split tiles' or the retuning's.
# Then bench/lowrank_cublas.py (kernel 1's low-rank dot against the same down-projection by cuBLAS beside it) and,
# with TEST=1, the new tiles' GPU check: test_every_gemm_variant_matches_reference at 2048 rows runs every large-M
# candidate of every path against the reference (≤ 1e-3), the new ones among them with VAR_GEN_W4A4_SPLIT_TMA=1.
#   CALL_S=560 bash bench/device/split_mid_m.sh   (the split run gets what is left of CALL_S but AFTER_S, default 80)
source bench/device/autotune_carry.sh
build_extension
shapes=${SHAPES:-3584x3584,14336x3584,3584x14336,2048x7168,3584x10752}
ms=${MS:-288,512,800,1152,2048}
timeout ${BASE_S:-150} python3 bench/kernel_bench.py --only gemm --no-paths --shapes "$shapes" --ms "$ms" \
  --json "$OUT/split_base.json" > "$OUT/split_base.txt" 2>&1
echo "base rc $? s $(( $(date +%s) - t0 ))"; grep -v Warning "$OUT/split_base.txt" | tail -22
VAR_GEN_W4A4_SPLIT_TMA=1 VAR_GEN_W4A4_SPLIT_MAX_M=2048 VAR_GEN_TUNED_PICKS=0 timeout $(( ${CALL_S:-560} - $(date +%s) + t0 - ${AFTER_S:-80} )) \
  python3 bench/kernel_bench.py --only gemm --no-paths --shapes "$shapes" --ms "$(echo "$ms" | tr , '\n' | sort -rn | paste -sd,)" \
  --json "$OUT/split_tma.json" > "$OUT/split_tma.txt" 2>&1
echo "split rc $? s $(( $(date +%s) - t0 ))"; grep -v Warning "$OUT/split_tma.txt" | tail -22
timeout ${LOWRANK_S:-60} python3 bench/lowrank_cublas.py --json "$OUT/lowrank_cublas.json" > "$OUT/lowrank_cublas.txt" 2>&1
echo "lowrank rc $? s $(( $(date +%s) - t0 ))"; grep -v Warning "$OUT/lowrank_cublas.txt" | tail -8
if [ "${TEST:-0}" = 1 ]; then
  VAR_GEN_W4A4_SPLIT_TMA=1 timeout ${TEST_S:-120} python3 -m pytest -q -p no:cacheprovider \
    "test/test_kernels_gpu.py::test_every_gemm_variant_matches_reference[False]" > "$OUT/test_split_tma.txt" 2>&1
  echo "test rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/test_split_tma.txt"
fi
autotune_picks_save
