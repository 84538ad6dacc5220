#!/bin/bash
# The weights that run once per prompt or image offloaded to disk (offload_dir, thirtieth session) on the GPU.
# PARTS (default "tests parked bf16"; "sites" in a second call on the same machine):
#   tests   the offload's GPU tests (allocator counts, the KV-block borrow) and the device-rates test (TESTS_K: pytest -k)
#   parked  the 1024² edge proof of W4A4 + INT8 KV with the INT4 encoder, the condition layers and the VAE offloaded
#           (every measured run encodes and computes its condition anew, so the text stage and the condition include
#           their reads; the repeated-prompt line reads only the VAE)
#   bf16    bf16 with the bf16 encoder resident (the all-bf16 pipeline, its real peak uncapped)
#   side    one machine, side by side, all with the INT4 encoder: the offloaded run, bf16 and the resident one (issue
#           7's 1/3-of-bf16 peak and the latency ratios from one run; SIDE_TAG names the files' set)
#   cond    bench/condition_reload.py: the text-only layers' read and forward, their derived values carried over a load
#           or made again (thirty-first session)
#   reads   bench/offload_reads.py: each offloaded file's load, staged through pinned buffers (settings swept) against the
#           pageable read the loads used before (thirty-second session)
#   prefetch the offloaded run with a new prompt's condition layers read after the text encoder
#           (VAR_GEN_OFFLOAD_PREFETCH=0, the default), then while it computes (=1; built in the thirty-fourth session)
#   sites   the offloaded run again with every allocation's stack recorded, to name the ~0.25 GiB live between
#           generations beside the weights and the kept KV caches ("live ... MiB" lines; its timings not comparable)
# About 4-6 minutes for the default parts with the committed picks (the tests tune the tiny model's W4A4 shapes).
source bench/device/autotune_carry.sh
build_extension
PARTS=${PARTS:-tests parked bf16}
edge() {   # TAG MODE TE [extra args]
  local tag=$1 mode=$2 te=$3; shift 3
  timeout -s ABRT -k 10 ${EDGE_TIMEOUT:-170} python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes $mode \
    --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder $te "$@" --json "$OUT/edge_$tag.json" \
    > "$OUT/edge_$tag.txt" 2>&1
  echo "edge $tag rc $? s $(( $(date +%s) - t0 ))"; pkill -9 -f "[e]dge_proof.py --child"
  grep -E "^(w4a4|bf16)|rror|WARN|same prompt again|new prompt through" "$OUT/edge_$tag.txt" | tail -5
}
if [[ " $PARTS " == *" tests "* ]]; then
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q test/test_parking.py test/test_edge_memory.py test/test_staged_read.py \
    -k "${TESTS_K:-offload or parked or device_rates or read_into}" > "$OUT/test_offload.txt" 2>&1
  echo "tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/test_offload.txt"
fi
if [[ " $PARTS " == *" cond "* ]]; then
  timeout -k 10 ${COND_TIMEOUT:-150} python3 bench/condition_reload.py --json "$OUT/condition_reload.json" \
    > "$OUT/condition_reload.txt" 2>&1
  echo "cond rc $? s $(( $(date +%s) - t0 ))"; tail -5 "$OUT/condition_reload.txt"
fi
if [[ " $PARTS " == *" reads "* ]]; then
  timeout -k 10 ${READS_TIMEOUT:-180} python3 bench/offload_reads.py --json "$OUT/offload_reads.json" \
    > "$OUT/offload_reads.txt" 2>&1
  echo "reads rc $? s $(( $(date +%s) - t0 ))"; tail -28 "$OUT/offload_reads.txt"
fi
[[ " $PARTS " == *" parked "* ]] && edge offloaded w4a4_kv8 int4 --offload-dir "$PWD/.park"
[[ " $PARTS " == *" bf16 "* ]] && edge bf16_te_bf16 bf16 bf16
if [[ " $PARTS " == *" side "* ]]; then
  edge side${SIDE_TAG:-}_offloaded w4a4_kv8 int4 --offload-dir "$PWD/.park"
  edge side${SIDE_TAG:-}_bf16 bf16 int4
  edge side${SIDE_TAG:-}_resident w4a4_kv8 int4
fi
if [[ " $PARTS " == *" prefetch "* ]]; then
  for v in 0 1; do
    VAR_GEN_OFFLOAD_PREFETCH=$v edge prefetch${v}_offloaded w4a4_kv8 int4 --offload-dir "$PWD/.park"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: (v['loads'], v.get('prefetched'), round(v['load_s_mean'], 4)) for k, v in r['w4a4_kv8']['runs'][0]['offloaded'].items()})" "$OUT/edge_prefetch${v}_offloaded.json" 2>&1 | tail -1
  done
fi
if [[ " $PARTS " == *" sites "* ]]; then
  edge sites w4a4_kv8 int4 --offload-dir "$PWD/.park" --memory-sites 1
  grep " live " "$OUT/edge_sites.txt" | cut -c1-200 | head -20
fi
true
