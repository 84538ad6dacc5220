#!/bin/bash
# Eleventh session: the FFN in sub-slices of at most 1024 tokens (CrossAttnBlock.ffn_tokens, commit d74ec1f;
# measured, then reverted: see docs/BENCHMARKS.md): the edge proof at 2048- and 1024-token slices, then the GPU test of every W4A4 tile.
source bench/device/autotune_carry.sh
edge_round ffn "${CHUNKS:-2048 1024}" ${MODES:-w4a4_kv8,bf16} ${EDGE_TIMEOUT:-150}
autotune_save
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q test/test_kernels_gpu.py -k "every_gemm_variant or block_fast" > "$OUT/test_gpu_tiles_eleventh.txt" 2>&1
echo "tile tests rc $?"; tail -4 "$OUT/test_gpu_tiles_eleventh.txt" | cut -c1-300
