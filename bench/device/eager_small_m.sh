#!/bin/bash
# Thirty-eighth session's question: in the GEMM table's first half (gemm_table_part1_thirtyeighth_h100.txt) the W4A4
# product's eager time (launched from Python per call, `do_bench`) at 2-32 rows was 1.5-5.4x the twenty-sixth
# session's, while its CUDA-graph replay was 1.5-12.5 % faster (17 of 18 cells) and bf16's eager time within 6 %; the
# PyTorch reference's eager time also doubled on 3584^2, so part of it is that host. Since the twenty-sixth session's
# table the small-M GEMM became a programmatic dependent launch (VAR_GEN_W4A4_PDL, default on). This times the block
# shapes at 2, 8, 32 and 128 rows with it on and off, twice each, alternating, in separate processes of one run: a
# host cost of the launch shows as eager on > off with the graph columns level. About 4 x 40 s with the build.
# Run in the thirty-ninth session (238 s, gemm_eager_pdl*_thirtyninth_h100.*): the eager times of one setting differ
# up to 3.7x between its two rounds, with the launch on and off alike and at 128 rows where it does not apply: the
# host's Python dispatch, not the launch. The graph replay agrees within 2.5 % between rounds (docs/BENCHMARKS.md).
source bench/device/autotune_carry.sh
build_extension
for round in 1 2; do
  for pdl in 1 0; do
    GEMM_TIMEOUT=100 gemm_run "eager_pdl${pdl}_r$round" 2,8,32,128 VAR_GEN_W4A4_PDL=$pdl
  done
done
pack_out
