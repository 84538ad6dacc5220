#!/bin/bash
# Eleventh session: why the dequantize+SDPA attention slows the eager large scales of a generation. 4 blocks
# of Infinity-8B shapes, W4A4 + INT8 KV, 1024-token slices, graphs up to 1024 tokens, timed and profiled
# (bench/gpu_time_profile.py) with the SDPA path graph-only (default) and also eager (VAR_GEN_KV_SDPA_EAGER=1).
source bench/device/autotune_carry.sh
for eager in 0 1; do
  VAR_GEN_KV_SDPA_EAGER=$eager timeout 200 python3 bench/gpu_time_profile.py --depth 4 --size 1024 --modes w4a4_kv8 \
    --settings 1024:1024 --profile-chunks 1024 --json "$OUT/gpu_profile_sdpa_eager$eager.json" > "$OUT/gpu_profile_sdpa_eager$eager.txt" 2>&1
  echo "eager=$eager rc $?"; grep -v Warn "$OUT/gpu_profile_sdpa_eager$eager.txt" | grep -E "generation|GPU range|cudnn|_attn|kv_dequant|flash" | cut -c1-200
done
autotune_save
