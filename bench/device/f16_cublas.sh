#!/bin/bash
# Seventh session, sixth run: the f16 path's exact fp16 operands through cuBLAS (bench/f16_cublas.py),
# against bf16 and the Triton paths at M = 512..8192 (picks carried in .tcache/).
source bench/device/autotune_carry.sh
timeout 420 python3 bench/f16_cublas.py --json "$OUT/f16_cublas_h100.json" > "$OUT/f16_cublas_h100.txt" 2>&1
tail -c 6000 "$OUT/f16_cublas_h100.txt" | python3 -c "
import sys, json
for l in sys.stdin:
    if l.startswith('{'):
        r = json.loads(l); print(r['K'], r['N'], r['M'], 'err', r['rel_err'], 'bf16', r['bf16_ms'], 'cublas', r['cublas_path_ms'],
              'q', r['quantize_f16_ms'], 'w', r['dequant_w_ms'], 'mm', r['mm_f16_f32out_ms'], 'epi', r['epilogue_ms'],
              'fp8', r['fp8_ms'], 'fp8w', r['fp8w_ms'], 'f16w', r['f16w_ms'], 'x', r['cublas_vs_best_triton'])
    else: print(l.rstrip()[:300])
"
