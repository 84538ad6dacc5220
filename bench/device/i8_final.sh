#!/bin/bash
# Eighth session, last run (picks carried in .tcache/): the edge proof with the final kernels (i8 path,
# reciprocal quantizer) at 1024² and 512², W4A4 + INT8 KV and bf16, CUDA graphs on; then the large-M
# GEMM rows of the shapes the table's first half measured before the quantizer change, and 3584->21504.
source bench/device/autotune_carry.sh
timeout 330 python3 bench/edge_proof.py --resolutions 1024x1024,512x512 --cap-gib 14 \
  --modes w4a4_kv8,bf16 --cuda-graphs 1 --json "$OUT/edge_i8_final.json" > "$OUT/edge_i8_final.txt" 2>&1
pkill -9 -f "[e]dge_proof.py --child"
grep -E "^(w4a4|bf16)|Error|rror:" "$OUT/edge_i8_final.txt" | head -20
timeout 190 python3 bench/kernel_bench.py --only gemm --shapes 3584x10752,3584x3584,2048x7168,3584x21504 --ms 2048,8192 \
  --paths i8w --parts --json "$OUT/gemm_i8_large_m.json" > "$OUT/gemm_i8_large_m.txt" 2>&1
grep -v parts "$OUT/gemm_i8_large_m.txt" | cut -c1-200 | tail -10
grep parts "$OUT/gemm_i8_large_m.txt" | cut -c1-120 | tail -10
autotune_save
