#!/bin/bash
# Twentieth session: the edge proof at 1024² with CFG on one machine, W4A4 + INT8 KV with the CUDA kernels as
# the product would take them (the small-M kernel up to 8 rows, the tiled one up to TILED rows), the same
# without the tiled kernel (VAR_GEN_W4A4_TILED_MAX_M=0), and bf16.
source bench/device/autotune_carry.sh
export TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext
mkdir -p "$TORCH_EXTENSIONS_DIR"
VAR_GEN_W4A4_TILED_MAX_M=${TILED:-128} TE=int4 GRAPH_MAX=4096 edge_round tiled 1024 w4a4_kv8 ${EDGE_TIMEOUT:-150}
[ "${AB:-1}" = 1 ] && VAR_GEN_W4A4_TILED_MAX_M=0 TE=int4 GRAPH_MAX=4096 edge_round tiled_off 1024 w4a4_kv8 ${EDGE_TIMEOUT:-150}
[ "${BF16:-1}" = 1 ] && TE=int4 GRAPH_MAX=4096 edge_round tiled_bf16 1024 bf16 ${EDGE_TIMEOUT:-150}
[ "${SAVE:-0}" = 1 ] && autotune_save
true
