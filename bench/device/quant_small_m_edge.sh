#!/bin/bash
# Twenty-first session: the edge proof at 1024² with CFG on one machine, W4A4 + INT8 KV with the CUDA kernel 1
# up to 8 rows (VAR_GEN_W4A4_QUANT_CUDA_MAX_M=8, the default again since the twenty-third session), the same with the
# Triton kernel 1 (VAR_GEN_W4A4_QUANT_CUDA_MAX_M=0), then bf16 (uncapped, to report its real peak). WARM=1 runs a 512² W4A4 edge
# first, so that Triton kernels missing from the carried cache compile outside the timed runs' limits.
source bench/device/autotune_carry.sh
export TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext
mkdir -p "$TORCH_EXTENSIONS_DIR"
t0=$(date +%s)
if [ "${WARM:-1}" = 1 ]; then
  timeout ${WARM_TIMEOUT:-150} python3 bench/edge_proof.py --resolutions 512x512 --cap-gib 14 --modes w4a4_kv8 \
    --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder int4 > "$OUT/edge_warm.txt" 2>&1
  echo "warm rc $? s $(( $(date +%s) - t0 ))"; pkill -9 -f "[e]dge_proof.py --child"
fi
VAR_GEN_W4A4_QUANT_CUDA_MAX_M=8 TE=int4 GRAPH_MAX=4096 edge_round k1cuda 1024 w4a4_kv8 ${EDGE_TIMEOUT:-150}
echo "s $(( $(date +%s) - t0 ))"
[ "${TRITON_K1:-1}" = 1 ] && VAR_GEN_W4A4_QUANT_CUDA_MAX_M=0 TE=int4 GRAPH_MAX=4096 edge_round k1triton 1024 w4a4_kv8 ${EDGE_TIMEOUT:-150}
echo "s $(( $(date +%s) - t0 ))"
[ "${BF16:-1}" = 1 ] && TE=int4 GRAPH_MAX=4096 edge_round pair_bf16 1024 bf16 ${EDGE_TIMEOUT:-150}
echo "total s $(( $(date +%s) - t0 ))"
true
