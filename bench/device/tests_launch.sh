#!/bin/bash
# Seventh session, third run (autotuning picks carried in .tcache/): the whole GPU test suite of the
# kernels and the CUDA graphs (the graphs' KV pool lent to the VAE decode, the shared input buffer, the
# direct launches), then one eager W4A4 linear call's host cost with the direct launches and without.
source bench/device/autotune_carry.sh
timeout 420 python3 -m pytest -q --tb=short test/test_kernels_gpu.py test/test_graphs.py > "$OUT/test_gpu_all.txt" 2>&1
tail -4 "$OUT/test_gpu_all.txt"
timeout 60 python3 bench/host_overhead.py --calls 1000 --json "$OUT/host_overhead_direct.json" --profile "$OUT/host_overhead_direct_profile.txt" 2>&1 | grep '^{'
VAR_GEN_FAST_LAUNCH=0 timeout 60 python3 bench/host_overhead.py --calls 1000 --json "$OUT/host_overhead_triton.json" 2>&1 | grep '^{'
autotune_save
