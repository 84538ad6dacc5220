# Sourced by the device scripts: Triton's cache carried between device runs. The previous run's
# $OUT/autotune.tgz (the autotuning picks, *.autotune.json, a few tens of KB) and, when it was small
# enough to carry, $OUT/triton_cache.tgz (every compiled kernel: a fresh machine otherwise spends
# minutes compiling), copied into .tcache/ here and named in the run's `carry`, are unpacked into
# Triton's cache first; `autotune_save` writes this run's to $OUT.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p ~/.triton/cache
[ -f .tcache/triton_cache.tgz ] && tar xzf .tcache/triton_cache.tgz -C ~/.triton/cache && echo "compiled kernels carried in"
[ -f .tcache/autotune.tgz ] && tar xzf .tcache/autotune.tgz -C ~/.triton/cache && echo "autotune picks carried in"
autotune_save() {
  (cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -)
  (cd ~/.triton/cache && tar czf "$OUT/triton_cache.tgz" .)
  local n; n=$(stat -c %s "$OUT/triton_cache.tgz"); echo "triton cache tgz: $n bytes"
  [ "$n" -gt 50000000 ] && rm "$OUT/triton_cache.tgz"
  true
}
