#!/bin/bash
# Seventh session, seventh run: the f16 quantizer's row bounds from one pass (_row_bound) instead of one
# per K split; the GPU tests of the quantizer and the f16 paths, then bench/f16_cublas.py again (it times
# the f16 quantizer and every path at M = 512..8192; picks carried in .tcache/).
source bench/device/autotune_carry.sh
timeout 200 python3 -m pytest -q --tb=short test/test_kernels_gpu.py \
  -k "quantizer or f16_path or split_k or kernel_matches_reference or direct" > "$OUT/test_row_bound.txt" 2>&1
tail -3 "$OUT/test_row_bound.txt"
timeout 300 python3 bench/f16_cublas.py --json "$OUT/f16_cublas_rowbound_h100.json" > "$OUT/f16_cublas_rowbound_h100.txt" 2>&1
python3 -c "
import json
for r in json.load(open('$OUT/f16_cublas_rowbound_h100.json'))['rows']:
    print(r['K'], r['N'], r['M'], 'bf16', round(r['bf16_ms'],4), 'q16', round(r['quantize_f16_ms'],4), 'fp8', round(r['fp8_ms'],4), 'fp8w', round(r['fp8w_ms'],4), 'f16w', round(r['f16w_ms'],4), 'default', r['default_path'], round(r['default_ms'],4))
"
