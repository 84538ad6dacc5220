# Sourced by the device scripts: Triton's autotuning picks (*.autotune.json, a few tens of KB) carried
# between device runs. The previous run's $OUT/autotune.tgz, copied into .tcache/ here and named in the
# run's `carry`, is unpacked into Triton's cache first; `autotune_save` writes this run's picks to $OUT.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p ~/.triton/cache
[ -f .tcache/autotune.tgz ] && tar xzf .tcache/autotune.tgz -C ~/.triton/cache && echo "autotune picks carried in"
autotune_save() { (cd ~/.triton/cache && find . -name "*.autotune.json" | tar czf "$OUT/autotune.tgz" -T -); }
