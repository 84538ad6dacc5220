#!/bin/bash
# The VAE decoder with its activations channels-last (VAR_GEN_VAE_CHANNELS_LAST, thirty-third session, built and checked
# in Triton's interpreter and for sm_90 / sm_87, not yet run on a GPU): the GroupNorm kernels' GPU tests (NCHW and NHWC
# against float64, the 8B decoder in both layouts), then bench/vae_decode.py (the kernel in NCHW against its NHWC form
# with NCHW and with channels-last weights, side by side, with profiles); with EDGE=1 the 1024² edge proof (W4A4 + INT8
# KV, offloaded as the preset) with the switch off, then on. About 2 minutes, 4 with EDGE=1. Ran in the thirty-seventh
# session (docs/BENCHMARKS.md): the tests pass, the decode 36.33 -> 35.25 ms; the switch stays off.
source bench/device/autotune_carry.sh
build_extension
timeout 150 python3 -m pytest -q test/test_kernels_gpu.py -k "group_norm or vae_decode" > "$OUT/test_vae_channels_last.txt" 2>&1
echo "tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/test_vae_channels_last.txt"
timeout 200 python3 bench/vae_decode.py --repeats 9 --profile --json "$OUT/vae_decode_channels_last.json" \
  > "$OUT/vae_decode_channels_last.txt" 2>&1
echo "decode rc $? s $(( $(date +%s) - t0 ))"; head -8 "$OUT/vae_decode_channels_last.txt"
if [ "${EDGE:-0}" = 1 ]; then
  for v in 0 1; do
    VAR_GEN_VAE_CHANNELS_LAST=$v timeout -s ABRT -k 10 170 python3 bench/edge_proof.py --resolutions 1024x1024 \
      --cap-gib 14 --modes w4a4_kv8 --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder int4 \
      --offload-dir "$PWD/.park" --json "$OUT/edge_vae_nhwc$v.json" > "$OUT/edge_vae_nhwc$v.txt" 2>&1
    echo "edge VAE_CHANNELS_LAST=$v rc $? s $(( $(date +%s) - t0 ))"; grep -E "^w4a4|same prompt again" "$OUT/edge_vae_nhwc$v.txt" | tail -2
  done
fi
autotune_picks_save
pack_out      # (the thirty-seventh session's run, unpacked, left vae_decode's files behind: too many under $OUT)
true
