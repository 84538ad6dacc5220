#!/bin/bash
# Eleventh session, second run: why the dequantize+SDPA attention path slowed the eager scales
# (bench/attention_eager.py), and cuBLASLt's INT8 GEMM against the Triton i8w GEMM (bench/int8_gemm_probe.py).
source bench/device/autotune_carry.sh
timeout 120 python3 bench/attention_eager.py --json "$OUT/attention_eager_h100.json" > "$OUT/attention_eager_h100.txt" 2>&1
echo "eager attention rc $?"; cut -c1-600 "$OUT/attention_eager_h100.txt"
timeout 300 python3 bench/int8_gemm_probe.py --json "$OUT/int8_gemm_probe_h100.json" > "$OUT/int8_gemm_probe_h100.txt" 2>&1
echo "int8 probe rc $?"; cut -c1-700 "$OUT/int8_gemm_probe_h100.txt"
autotune_save
