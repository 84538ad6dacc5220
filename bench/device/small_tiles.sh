#!/bin/bash
# The small-M tiles among the GEMM tuner's candidates up to 256 rows (VAR_GEN_W4A4_SMALL_TILES_MAX_M=256) against
# only up to 64 (the default), in two processes on one machine (the first compiles), the block shapes at the rows
# of scales 3 and 4 of a 1024² image with CFG (72, 128) and two more up to 256 (from 257 rows i8w takes over). Then, with SMALL=1, the
# edge proof with it on (compare with PART=2 of verify_sixteenth.sh on the same machine). Carry .tcache when
# there is one.
source bench/device/autotune_carry.sh
for mx in 64 256; do
  VAR_GEN_W4A4_SMALL_TILES_MAX_M=$mx timeout ${GEMM_TIMEOUT:-240} python3 bench/kernel_bench.py --only gemm \
    --shapes 3584x10752,3584x3584,3584x14336,14336x3584 --ms 72,128,200,256 --no-paths \
    --json "$OUT/gemm_small_tiles$mx.json" > "$OUT/gemm_small_tiles$mx.txt" 2>&1
  echo "small tiles up to $mx rc $?"; grep -vi warn "$OUT/gemm_small_tiles$mx.txt" | tail -20 | cut -c1-160
done
if [ "${SMALL:-0}" = 1 ]; then
  VAR_GEN_W4A4_SMALL_TILES_MAX_M=256 GRAPH_MAX=4096 edge_round small_tiles 1024 w4a4_kv8 ${EDGE_TIMEOUT:-420}
fi
autotune_save
