#!/bin/bash
# Twelfth session: the edge proof at 1024² (1024-token slices) with the qkv epilogue inside the W4A4 GEMM,
# then without it (VAR_GEN_W4A4_QKV_EPILOGUE=0: the GEMM's bf16 output and the epilogue kernel), same machine.
source bench/device/autotune_carry.sh
edge_round twelfth_ab_fused "${CHUNKS:-1024}" w4a4_kv8,bf16 ${EDGE_TIMEOUT:-270}
VAR_GEN_W4A4_QKV_EPILOGUE=0 edge_round twelfth_ab_unfused "${CHUNKS:-1024}" w4a4_kv8 ${EDGE_TIMEOUT:-200}
(cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
