#!/bin/bash
# For the next session (not run in the nineteenth: no device time left): after small_m_second.sh, .tcache/torch_ext carried: the GEMM table at M = 2 and 32 with the
# i8s path as the default (bench/kernel_bench.py), then the edge proof at 1024² with CFG, W4A4 + INT8 KV with
# the i8s path at its default (up to 8 rows) and with it off (VAR_GEN_W4A4_SMALL_M_MAX=0), and bf16, on the same machine.
source bench/device/autotune_carry.sh
export TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext
mkdir -p "$TORCH_EXTENSIONS_DIR"
if [ "${GEMM:-1}" = 1 ]; then
  timeout ${GEMM_TIMEOUT:-150} python3 bench/kernel_bench.py --only gemm --ms 2,32 --no-paths \
    --json "$OUT/gemm_small_m.json" > "$OUT/gemm_small_m.txt" 2>&1
  echo "gemm rc $?"; grep -vi warn "$OUT/gemm_small_m.txt" | grep -E "^ +[0-9]+ +[0-9]+ +[0-9]+ \|" | cut -c1-150
fi
TE=int4 GRAPH_MAX=4096 edge_round small_m 1024 w4a4_kv8 ${EDGE_TIMEOUT:-130}
[ "${AB:-1}" = 1 ] && VAR_GEN_W4A4_SMALL_M_MAX=0 TE=int4 GRAPH_MAX=4096 edge_round small_m_off 1024 w4a4_kv8 ${EDGE_TIMEOUT:-130}
[ "${BF16:-1}" = 1 ] && TE=int4 GRAPH_MAX=4096 edge_round small_m_bf16 1024 bf16 ${EDGE_TIMEOUT:-130}
autotune_save
