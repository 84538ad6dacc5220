# The INT8 K loop with its wgmma asynchronous (kernels/i8_mainloop_gluon.py, forty-eighth session) on one GPU machine:
# its GPU test (exact sums on every 8B shape), then bench/i8_mainloop.py (against the same loop in Triton, cuBLASLt's
# INT8 GEMM and bf16 cuBLAS; then its whole i8w GEMM against the product's) at BENCH_MS rows. ~2-3 min after the start.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PWD/test
t0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader
timeout ${BENCH_S:-150} python3 bench/i8_mainloop.py --ms ${BENCH_MS:-4096} --json "$OUT/i8_mainloop.json" > "$OUT/i8_mainloop.txt" 2>&1
echo "bench rc $? s $(( $(date +%s) - t0 ))"; grep -v -i warn "$OUT/i8_mainloop.txt" | cut -c1-600 | tail -8
timeout ${TESTS_S:-120} python3 -m pytest -q -p no:cacheprovider test/test_kernels_gpu.py -k gluon > "$OUT/gpu_tests_gluon.txt" 2>&1
echo "tests rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/gpu_tests_gluon.txt" | cut -c1-600
