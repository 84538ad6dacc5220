#!/bin/bash
# What the thirty-fourth session built and could not time (its last device call was refused), in one call of about 9
# minutes, most needed first:
#   1. GPU tests: the condition layers' read beside the text encoder (ParkedWeights.prefetch, the joint lease with kept
#      caches, the KV-block borrow), the text encoder's CUDA graphs (test_text_graphs.py), and the VAE's channels-last
#      GroupNorm kernels;
#   2. the 1024² edge proof (W4A4 + INT8 KV, INT4 encoder), one process per setting, compared by their "a new prompt
#      through generate" lines: offloaded as the edge preset with both off, with VAR_GEN_OFFLOAD_PREFETCH=1, and with
#      VAR_GEN_TEXT_GRAPHS=1 too; resident with both off, then with VAR_GEN_TEXT_GRAPHS=1;
#   3. bench/vae_decode.py (the GroupNorm kernel in NCHW against its channels-last forms);
#   4. bench/text_encoder_quant.py (the T5-XL-shaped encoder's encode, eager and as CUDA graphs, bf16 / INT8 / INT4).
# A part is skipped when too little of CALL_S (default 560) is left. Then, in a second call on the same machine, issue
# 7's side by side with the defaults that won: PARTS=side SIDE_TAG=6 bash bench/device/te_park.sh (about 3 minutes),
# and with EDGE=1 bash bench/device/vae_channels_last.sh if the decode gained.
source bench/device/autotune_carry.sh
build_extension
left() { echo $(( ${CALL_S:-560} - $(date +%s) + t0 )); }
timeout 100 python3 -m pytest -q test/test_parking.py test/test_text_graphs.py -k "prefetched or beside or borrow or gpu" \
  > "$OUT/test_prefetch_text_graphs.txt" 2>&1
echo "prefetch / text graph tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/test_prefetch_text_graphs.txt"
timeout 100 python3 -m pytest -q test/test_kernels_gpu.py -k "group_norm or vae_decode" > "$OUT/test_vae_channels_last.txt" 2>&1
echo "vae tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/test_vae_channels_last.txt"
# EDGE_SPECS: "where:envs" items separated by ";" (where: offloaded, resident or bf16; envs "-" for the defaults).
EDGE_SPECS=${EDGE_SPECS:-"offloaded:-;offloaded:VAR_GEN_OFFLOAD_PREFETCH=1;offloaded:VAR_GEN_OFFLOAD_PREFETCH=1 VAR_GEN_TEXT_GRAPHS=1;resident:-;resident:VAR_GEN_TEXT_GRAPHS=1"}
IFS=';' read -ra specs <<< "$EDGE_SPECS"
for spec in "${specs[@]}"; do
  where=${spec%%:*} envs=${spec#*:}
  tag=${where}_${envs//[^A-Za-z0-9]/_}; [ "$envs" = - ] && tag=${where}_defaults
  [ "$(left)" -lt 75 ] && echo "edge $tag not run" && continue
  extra=(); [ "$where" = offloaded ] && extra=(--offload-dir "$PWD/.park")
  mode=w4a4_kv8 limit=100; [ "$where" = bf16 ] && mode=bf16 limit=150   # bf16 runs uncapped, then fails under the cap
  [ "$(left)" -lt $((limit - 25)) ] && echo "edge $tag not run" && continue
  env ${envs/#-/DEFAULTS=1} timeout -s ABRT -k 10 $limit python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 \
    --modes $mode --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder int4 "${extra[@]}" \
    --json "$OUT/edge_$tag.json" > "$OUT/edge_$tag.txt" 2>&1
  echo "edge $tag rc $? s $(( $(date +%s) - t0 ))"; pkill -9 -f "[e]dge_proof.py --child"
  grep -E "^(w4a4|bf16)|new prompt through|same prompt again|rror" "$OUT/edge_$tag.txt" | tail -3
  grep -o "text encoder: [^;]*" "$OUT/edge_$tag.txt" | tail -1
done
if [ "$(left)" -gt 90 ]; then
  timeout 90 python3 bench/vae_decode.py --repeats 5 --json "$OUT/vae_decode_channels_last.json" \
    > "$OUT/vae_decode_channels_last.txt" 2>&1
  echo "decode rc $? s $(( $(date +%s) - t0 ))"; head -8 "$OUT/vae_decode_channels_last.txt"
fi
if [ "$(left)" -gt 100 ]; then
  timeout 100 python3 bench/text_encoder_quant.py --repeats 10 --json "$OUT/text_encoder_graphs.json" \
    > "$OUT/text_encoder_graphs.txt" 2>&1
  echo "text encoder rc $? s $(( $(date +%s) - t0 ))"; grep "^encode s" "$OUT/text_encoder_graphs.txt"
fi
autotune_picks_save
pack_out
true
