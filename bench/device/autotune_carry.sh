# Sourced by the device scripts: Triton's cache carried between device runs. The previous run's
# $OUT/autotune.tgz (the autotuning picks, *.autotune.json, a few tens of KB) and, when it was small
# enough to carry, $OUT/triton_cache.tgz (every compiled kernel: a fresh machine otherwise spends
# minutes compiling; in 15 MB parts triton_cache.tgz.NN, the device tool's per-file limit being 16 MiB),
# copied into .tcache/ here and named in the run's `carry`, are unpacked into Triton's cache first;
# `autotune_save` writes this run's to $OUT.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p ~/.triton/cache
ls .tcache/triton_cache.tgz* > /dev/null 2>&1 && cat .tcache/triton_cache.tgz* | tar xz -C ~/.triton/cache && echo "compiled kernels carried in"
[ -f .tcache/autotune.tgz ] && tar xzf .tcache/autotune.tgz -C ~/.triton/cache && echo "autotune picks carried in"
# A fresh session has no .tcache: the picks committed from the last full run (bench/device/autotune_h100.tgz: the
# twenty-third and twenty-fourth sessions' H100, 113 tunings, every kernel of a 1024² W4A4 + INT8 KV edge proof;
# Triton's key is the architecture, sm_90 for the H200 too) spare the tests that call the kernels directly the
# tuner's trials. A pick whose kernel source or candidate list has changed since is a cache miss (Triton's key hashes
# both), and that kernel is tuned again: 17 tunings in the twenty-fourth session's first edge run. The product itself
# no longer depends on this file on the H100: the dispatcher seeds the tuners from kernels/tuned/ (the same picks as
# a table keyed by kernel name and tuning key, not by source hash; kernels/tuned_picks.py makes it from this file).
# COMMITTED_PICKS=0 leaves them out: a robot's fresh start, with only the tables shipped in kernels/tuned/.
[ "${COMMITTED_PICKS:-1}" = 1 ] && [ ! -f .tcache/autotune.tgz ] && [ -f bench/device/autotune_h100.tgz ] && tar xzf bench/device/autotune_h100.tgz -C ~/.triton/cache \
  && echo "committed autotune picks unpacked"
# autotune_picks_save: only this run's picks ($OUT/autotune.tgz), to merge into bench/device/autotune_h100.tgz
# (bench/device/merge_picks.sh) so that the next session's GPU tests skip the tuner's trials
autotune_picks_save() {
  (cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
  echo "picks saved: $(tar tzf "$OUT/autotune.tgz" | wc -l)"
}
autotune_save() {
  (cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
  (cd ~/.triton/cache && tar cz .) | split -b 15000000 -d - "$OUT/triton_cache.tgz."
  du -cb "$OUT"/triton_cache.tgz.* | tail -1
  local n; n=$(ls "$OUT"/triton_cache.tgz.* | wc -l)
  [ "$n" -gt 4 ] && rm "$OUT"/triton_cache.tgz.* && echo "triton cache not kept: $n parts"
  true
}
# edge_round TAG "CHUNKS" [MODES] [TIMEOUT]: the edge proof at 1024² under the 14 GiB cap, graphs up to
# GRAPH_MAX tokens (default 1024, what the earlier scripts ran; the product default is 4096), the text encoder
# TE (default int4, the edge preset's), once per slice size, written to $OUT/edge_TAG_cC.{json,txt}
edge_round() {
  local tag=$1 modes=${3:-w4a4_kv8,bf16} limit=${4:-170} C
  for C in $2; do
    timeout $limit python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes $modes \
      --cuda-graphs 1 --chunk-tokens $C --graph-max-tokens ${GRAPH_MAX:-1024} --text-encoder ${TE:-int4} --json "$OUT/edge_${tag}_c$C.json" > "$OUT/edge_${tag}_c$C.txt" 2>&1
    echo "edge C=$C rc $?"; pkill -9 -f "[e]dge_proof.py --child"
    grep -E "^(w4a4|bf16)|rror" "$OUT/edge_${tag}_c$C.txt" | head -5
  done
}
# gemm_run TAG MS [ENV=VALUE ...]: the block shapes' W4A4 GEMM (the product's path) at rows MS under the given
# environment, written to $OUT/gemm_TAG.{json,txt} (the A/B scripts run it once per side, in separate processes)
gemm_run() {
  local tag=$1 ms=$2; shift 2
  env "$@" timeout ${GEMM_TIMEOUT:-200} python3 bench/kernel_bench.py --only gemm \
    --shapes 3584x10752,3584x3584,3584x14336,14336x3584 --ms $ms --no-paths \
    --json "$OUT/gemm_$tag.json" > "$OUT/gemm_$tag.txt" 2>&1
  echo "gemm $tag ($*) rc $?"; grep -vi warn "$OUT/gemm_$tag.txt" | tail -20 | cut -c1-160
}
# build_extension: the small-M CUDA extension built in its own step (into .tcache/torch_ext), before any timed run:
# a run killed by its timeout mid-build would leave torch's build lock behind, on which every later process waits.
# Sets t0 (the script's clock) and PYTHONFAULTHANDLER (stacks on SIGABRT).
build_extension() {
  export TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext PYTHONFAULTHANDLER=1
  mkdir -p "$TORCH_EXTENSIONS_DIR"
  t0=$(date +%s)
  timeout ${BUILD_TIMEOUT:-200} python3 -c "from var_gen_ros.quant.dispatch import kernel_module as k; m = k('w4a4_small_m_cuda'); m.extension(); print(m.build_status())"
  echo "build rc $? s $(( $(date +%s) - t0 ))"
}
# edge_until CALL_S "MODES": the 1024² edge proof (the product's defaults: graphs up to 4096 tokens, the INT4 text
# encoder, 14 GiB cap) once per mode, each with what is left of the call's CALL_S seconds since t0 (a mode with under
# 70 s left is not started), written to $OUT/edge_MODE.{json,txt}
edge_until() {
  local call_s=$1 mode left
  for mode in $2; do
    left=$(( call_s - $(date +%s) + t0 ))
    [ "$left" -lt 70 ] && echo "edge $mode not run: ${left} s left" && continue
    timeout -s ABRT -k 10 $left python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes $mode \
      --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder int4 --json "$OUT/edge_$mode.json" \
      > "$OUT/edge_$mode.txt" 2>&1
    echo "edge $mode rc $? s $(( $(date +%s) - t0 ))"
    pkill -9 -f "[e]dge_proof.py --child"
    grep -E "^(w4a4|bf16)|rror|unloaded" "$OUT/edge_$mode.txt" | tail -4
  done
}
# pack_out: the device tool returns a limited number of files per call (8 came back in the thirty-fifth session's
# first call, the rest "left out (count)"): every file under $OUT but autotune.tgz into $OUT/out.tgz
pack_out() {
  local list; list=$(mktemp)
  (cd "$OUT" && find . -type f ! -name autotune.tgz ! -name out.tgz | sed 's#^\./##' > "$list" \
    && tar czf out.tgz -T "$list" && xargs rm -f < "$list")
  rm -f "$list"
  echo "packed into out.tgz: $(tar tzf "$OUT/out.tgz" | wc -l) files"
}
