# The INT8 K loop with its wgmma asynchronous (kernels/i8_mainloop_gluon.py, forty-eighth session) on one GPU machine:
# its GPU test (exact sums on every 8B shape), then bench/i8_mainloop.py (against the same loop in Triton, cuBLASLt's
# INT8 GEMM and bf16 cuBLAS; then its whole i8w GEMM against the product's) at BENCH_MS rows, ~2-3 min after the start;
# with EDGE=1 also the edge proof off and on (~6 min more). Files in $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PWD/test
t0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader
timeout ${BENCH_S:-150} python3 bench/i8_mainloop.py --ms ${BENCH_MS:-4096} --json "$OUT/i8_mainloop.json" > "$OUT/i8_mainloop.txt" 2>&1
echo "bench rc $? s $(( $(date +%s) - t0 ))"; grep -v -i warn "$OUT/i8_mainloop.txt" | cut -c1-600 | tail -8
timeout ${TESTS_S:-120} python3 -m pytest -q -p no:cacheprovider test/test_kernels_gpu.py -k gluon > "$OUT/gpu_tests_gluon.txt" 2>&1
echo "tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/gpu_tests_gluon.txt" | cut -c1-600
# EDGE=1: then the resident 1024² edge proof with the Gluon i8w GEMM off and on (VAR_GEN_W4A4_GLUON), each in its own
# process (the first also compiles the product's kernels on a fresh machine: EDGE_S each)
if [ "${EDGE:-0}" = 1 ]; then
  source bench/device/autotune_carry.sh
  for tag in off on; do
    v=0; [ "$tag" = on ] && v=1
    VAR_GEN_W4A4_GLUON=$v timeout -s ABRT -k 10 ${EDGE_S:-170} python3 bench/edge_proof.py --resolutions 1024x1024 \
      --cap-gib 14 --cuda-graphs 1 --chunk-tokens 2048 --graph-max-tokens 4096 --text-encoder int4 --modes w4a4_kv8 \
      --json "$OUT/edge_gluon_$tag.json" > "$OUT/edge_gluon_$tag.txt" 2>&1
    echo "edge $tag rc $? s $(( $(date +%s) - t0 ))"; pkill -9 -f "[e]dge_proof.py --child"
    grep -E "^w4a4|rror|new prompt" "$OUT/edge_gluon_$tag.txt" | tail -3
  done
fi
