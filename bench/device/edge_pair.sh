#!/bin/bash
# The edge proof at 1024² with CFG on one machine: W4A4 + INT8 KV with the product's defaults (the small-M CUDA
# GEMM up to 8 rows; the CUDA kernel 1 off since the twenty-second session), then bf16 (uncapped, to report its real peak).
source bench/device/autotune_carry.sh
export TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext
mkdir -p "$TORCH_EXTENSIONS_DIR"
TE=int4 GRAPH_MAX=4096 edge_round pair 1024 w4a4_kv8 ${EDGE_TIMEOUT:-140}
TE=int4 GRAPH_MAX=4096 edge_round pair_bf16 1024 bf16 ${EDGE_TIMEOUT:-140}
true
