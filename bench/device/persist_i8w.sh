# Two GEMM levers of the forty-eighth session, built and checked in the interpreter and by compiling for sm_90 here,
# not yet run on a GPU, on one GPU machine. PART, one or more of these in order:
#   persist  the i8 workspace GEMM as a persistent kernel (`_i8w_persistent`, VAR_GEN_W4A4_PERSIST): its GPU test (the
#            grid-per-tile tile's bits on every 8B shape at 2048, 4100 and 8192 rows), then bench/int8_gemm_probe.py
#            (the persistent tiles and their grid-per-tile twins against the default tuning and bf16 cuBLAS) at the
#            product's 2048- and 4096-row slices and 8192 (~4 min after the machine's start)
#   lrbf16   the two-bf16-dot low-rank epilogue on Hopper (VAR_GEN_W4A4_LR_BF16=1; tf32x3 spills the 128 x 256 TMA
#            tile there): the GEMM and qkv-epilogue GPU tests with it, then the default path's times off and on
#            (the shipped picks), interleaved in separate processes
# Files in $OUT, packed into out.tgz.
set -u
source bench/device/autotune_carry.sh
export PYTHONPATH=$PWD:$PWD/test
build_extension
for part in ${PART:-persist}; do
case "$part" in
persist)
  timeout ${TESTS_S:-200} python3 -m pytest -q -s -p no:cacheprovider test/test_kernels_gpu.py -k persistent \
    > "$OUT/gpu_tests_persist.txt" 2>&1
  echo "tests rc $? s $(( $(date +%s) - t0 ))"; grep -E "bit for bit|passed|failed|Error" "$OUT/gpu_tests_persist.txt" | tail -4
  timeout ${BENCH_S:-240} python3 bench/int8_gemm_probe.py --ms ${BENCH_MS:-2048,4096,8192} --tiles "k128 tma s3,k128 tma s4" \
    --json "$OUT/persist_probe.json" > "$OUT/persist_probe.txt" 2>&1
  echo "probe rc $? s $(( $(date +%s) - t0 ))"; grep -v -i warn "$OUT/persist_probe.txt" | cut -c1-400
  ;;
lrbf16)
  VAR_GEN_W4A4_LR_BF16=1 timeout ${TESTS_S:-200} python3 -m pytest -q -p no:cacheprovider test/test_kernels_gpu.py \
    -k "w4a4_kernel_matches_reference or qkv_epilogue" > "$OUT/gpu_tests_lrbf16.txt" 2>&1
  echo "tests rc $? s $(( $(date +%s) - t0 ))"; tail -2 "$OUT/gpu_tests_lrbf16.txt"
  for tag in off_a on_a off_b on_b; do
    v=0; [ "${tag#on}" != "$tag" ] && v=1
    VAR_GEN_W4A4_LR_BF16=$v timeout ${BENCH_S:-100} python3 bench/int8_gemm_probe.py --ms ${BENCH_MS:-2048,4096,8192} \
      --tiles none --json "$OUT/lrbf16_probe_$tag.json" > "$OUT/lrbf16_probe_$tag.txt" 2>&1
    echo "probe $tag rc $? s $(( $(date +%s) - t0 ))"; grep "M=" "$OUT/lrbf16_probe_$tag.txt" | cut -c1-110
  done
  ;;
esac
done
pack_out
