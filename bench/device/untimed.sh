#!/bin/bash
# What the thirty-fourth session built and could not time (its last device call was refused), in order of use, in one
# call of about 8 minutes: the GPU tests of the condition layers' read beside the text encoder (ParkedWeights.prefetch,
# the joint lease with kept caches, the KV-block borrow) and of the VAE's channels-last GroupNorm kernels; the 1024²
# edge preset (offloaded) with VAR_GEN_OFFLOAD_PREFETCH=0, then =1 (te_park.sh PARTS=prefetch: compare the "a new
# prompt through generate" lines); bench/vae_decode.py (NCHW against the channels-last variants); with EDGE=1 the edge
# preset with VAR_GEN_VAE_CHANNELS_LAST=0, then =1. Each part is skipped when fewer than its seconds are left of CALL_S
# (default 560). Then, in a second call on the same machine, issue 7's side by side with the row pass's low-rank dot
# the default: PARTS=side SIDE_TAG=6 bash bench/device/te_park.sh (offloaded, bf16, resident; about 3 minutes).
source bench/device/autotune_carry.sh
build_extension
left() { echo $(( ${CALL_S:-560} - $(date +%s) + t0 )); }
timeout 90 python3 -m pytest -q test/test_parking.py -k "prefetched or beside or borrow" > "$OUT/test_prefetch.txt" 2>&1
echo "prefetch tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/test_prefetch.txt"
timeout 120 python3 -m pytest -q test/test_kernels_gpu.py -k "group_norm or vae_decode" > "$OUT/test_vae_channels_last.txt" 2>&1
echo "vae tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/test_vae_channels_last.txt"
if [ "$(left)" -gt 120 ]; then
  PARTS=prefetch EDGE_TIMEOUT=100 bash bench/device/te_park.sh 2>&1 | grep -v "^build\|^NVIDIA\|picks"
fi
if [ "$(left)" -gt 100 ]; then
  timeout 100 python3 bench/vae_decode.py --repeats 5 --json "$OUT/vae_decode_channels_last.json" \
    > "$OUT/vae_decode_channels_last.txt" 2>&1
  echo "decode rc $? s $(( $(date +%s) - t0 ))"; head -8 "$OUT/vae_decode_channels_last.txt"
fi
if [ "${EDGE:-0}" = 1 ]; then
  for v in 0 1; do
    [ "$(left)" -lt 60 ] && echo "edge VAE_CHANNELS_LAST=$v not run" && continue
    VAR_GEN_VAE_CHANNELS_LAST=$v timeout -s ABRT -k 10 $(( $(left) - 5 )) python3 bench/edge_proof.py --resolutions 1024x1024 \
      --cap-gib 14 --modes w4a4_kv8 --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder int4 \
      --offload-dir "$PWD/.park" --json "$OUT/edge_vae_nhwc$v.json" > "$OUT/edge_vae_nhwc$v.txt" 2>&1
    echo "edge VAE_CHANNELS_LAST=$v rc $? s $(( $(date +%s) - t0 ))"; grep -E "^w4a4|prompt" "$OUT/edge_vae_nhwc$v.txt" | tail -3
  done
fi
autotune_picks_save
true
