#!/bin/bash
# The weights that run once per prompt or image offloaded to disk (offload_dir, thirtieth session) on the GPU: the
# tests, then the 1024² edge proof of W4A4 + INT8 KV with the INT4 encoder, the condition layers and the VAE offloaded
# (every measured run encodes and computes its condition anew, so the text stage and the condition include their reads), and bf16 with the bf16 encoder resident (the all-bf16 pipeline, its
# real peak uncapped); BF16=0 leaves that out. One call: about 3 minutes with the committed picks.
source bench/device/autotune_carry.sh
build_extension
timeout ${TEST_TIMEOUT:-60} python3 -m pytest -q test/test_parking.py test/test_edge_memory.py -k "offload or parked or device_rates" \
  > "$OUT/test_park.txt" 2>&1
echo "tests rc $?"; tail -2 "$OUT/test_park.txt"
edge() {   # TAG MODE TE [extra args]
  local tag=$1 mode=$2 te=$3; shift 3
  timeout -s ABRT -k 10 ${EDGE_TIMEOUT:-150} python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes $mode \
    --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder $te "$@" --json "$OUT/edge_$tag.json" \
    > "$OUT/edge_$tag.txt" 2>&1
  echo "edge $tag rc $? s $(( $(date +%s) - t0 ))"; pkill -9 -f "[e]dge_proof.py --child"
  grep -E "^(w4a4|bf16)|rror|WARN" "$OUT/edge_$tag.txt" | tail -3
}
edge parked w4a4_kv8 int4 --offload-dir "$PWD/.park"
[ "${BF16:-1}" = 1 ] && edge bf16_te_bf16 bf16 bf16
# SITES=1: once more with every allocation's stack recorded, to name the ~0.25 GiB live between generations beside the
# weights and the kept KV caches (edge_sites.txt's "live ... MiB" lines; the run's timings are not comparable)
[ "${SITES:-1}" = 1 ] && edge sites w4a4_kv8 int4 --offload-dir "$PWD/.park" --memory-sites 1 \
  && grep " live " "$OUT/edge_sites.txt" | cut -c1-200 | head -20
true
