#!/bin/bash
# Eleventh session, first run: the INT8-KV attention's dequantize-per-head-group + SDPA path (GPU tests,
# per-scale table against the in-register kernel and bf16 cuDNN), where a W4A4 Linear's time goes at
# the product's slice sizes (bench/w4a4_stages.py), then the edge proof at 1024-token slices.
source bench/device/autotune_carry.sh
timeout 120 python3 -m pytest -q test/test_kernels_gpu.py -k "int8_kv or status" > "$OUT/test_sdpa_gpu.txt" 2>&1
echo "attention tests rc $?"; tail -4 "$OUT/test_sdpa_gpu.txt"
timeout 150 python3 bench/kernel_bench.py --only attention --json "$OUT/attn_sdpa_h100.json" > "$OUT/attn_sdpa_h100.txt" 2>&1
echo "attention bench rc $?"; cut -c1-60,150-400 "$OUT/attn_sdpa_h100.txt"
timeout 200 python3 bench/w4a4_stages.py --json "$OUT/w4a4_stages_h100.json" > "$OUT/w4a4_stages_h100.txt" 2>&1
echo "stages rc $?"; cat "$OUT/w4a4_stages_h100.txt" | cut -c1-400
edge_round sdpa "${CHUNKS:-1024}" ${MODES:-w4a4_kv8,bf16} ${EDGE_TIMEOUT:-170}
autotune_save
