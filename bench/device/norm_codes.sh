# The LayerNorm making its W4A4 layer's codes (VAR_GEN_W4A4_NORM_CODES, forty-seventh session), on one GPU machine.
# PART, one or more of these in order: 1, its GPU tests and bench/norm_codes.py (the norm + layer pair, both forms side
# by side); 2, the resident 1024² edge proof with it off and on, interleaved (EDGE_TAGS, default off, on, off, on: each
# in its own process); 3, the edge preset (offloaded) with it on, for the allocated peak, and bf16 beside; 4, the
# third form's launches swept, the resident edge pair off and on with the fastest launch, then the GPU tests.
# Files in $OUT, packed into out.tgz.
set -u
source bench/device/autotune_carry.sh
export PYTHONPATH=$PWD:$PWD/test
build_extension
e() {   # e TAG LIMIT_S ENV... -- ARGS...: one edge proof process
  local tag=$1 limit=$2; shift 2
  local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" timeout -s ABRT -k 10 "$limit" python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 \
    --cuda-graphs 1 --chunk-tokens 2048 --graph-max-tokens 4096 --text-encoder int4 "$@" \
    --json "$OUT/edge_nc_$tag.json" > "$OUT/edge_nc_$tag.txt" 2>&1
  echo "edge $tag rc $? s $(( $(date +%s) - t0 ))"; pkill -9 -f "[e]dge_proof.py --child"
  grep -E "^(w4a4|bf16)|rror|new prompt" "$OUT/edge_nc_$tag.txt" | tail -4
}
for part in ${PART:-1}; do
case "$part" in
1)
  timeout 300 python3 -m pytest -q -p no:cacheprovider test/test_kernels_gpu.py -k "norm_codes or kernel1_only" \
    > "$OUT/gpu_tests_norm_codes.txt" 2>&1
  echo "tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/gpu_tests_norm_codes.txt"
  timeout ${BENCH_S:-240} python3 bench/norm_codes.py --ms ${BENCH_MS:-32,128,512,1152,2048,4096} --json "$OUT/norm_codes_bench.json" > "$OUT/norm_codes_bench.txt" 2>&1
  echo "bench rc $? s $(( $(date +%s) - t0 ))"; grep -v -i warn "$OUT/norm_codes_bench.txt" | cut -c1-150
  ;;
2)
  for tag in ${EDGE_TAGS:-off_a on_a off_b on_b}; do
    v=0; [ "${tag#on}" != "$tag" ] && v=1
    e "resident_$tag" "${EDGE_S:-125}" VAR_GEN_W4A4_NORM_CODES=$v -- --modes w4a4_kv8
  done
  ;;
4)   # the third form: its launches swept, the resident edge proof off and on with the fastest, then the GPU tests
  timeout 90 python3 bench/norm_codes.py --ms 128,1152,4096 --sweep "1,8;2,8;4,8;4,16" \
    --json "$OUT/norm_codes_sweep.json" > "$OUT/norm_codes_sweep.txt" 2>&1
  echo "sweep rc $? s $(( $(date +%s) - t0 ))"; grep "^M" "$OUT/norm_codes_sweep.txt"
  best=$(python3 -c "
import json; r = json.load(open('$OUT/norm_codes_sweep.json'))['sweep']
keys = [k for k in r[0]['us'] if k.startswith('norm_codes')]
print(min(keys, key=lambda k: sum(x['us'][k] for x in r)).split()[1])" 2>/dev/null || echo 1,8)
  echo "launch $best"
  e resident_off_c "${EDGE_S:-110}" VAR_GEN_W4A4_NORM_CODES=0 -- --modes w4a4_kv8
  e resident_on_c "${EDGE_S:-110}" VAR_GEN_W4A4_NORM_CODES=1 VAR_GEN_W4A4_NORM_CODES_LAUNCH=$best -- --modes w4a4_kv8
  timeout ${TESTS_S:-120} python3 -m pytest -q -p no:cacheprovider test/test_kernels_gpu.py -k "norm_codes" \
    > "$OUT/gpu_tests_norm_codes.txt" 2>&1
  echo "tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/gpu_tests_norm_codes.txt"
  ;;
3)
  e offloaded_on 140 VAR_GEN_W4A4_NORM_CODES=1 -- --modes w4a4_kv8 --offload-dir "$PWD/.park"
  e bf16 130 VAR_GEN_W4A4_NORM_CODES=0 -- --modes bf16
  ;;
esac
done
pack_out
