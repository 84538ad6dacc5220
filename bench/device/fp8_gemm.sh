#!/bin/bash
# The FP8-MMA W4A4 path vs the INT8 path vs bf16 (graph replay), then ncu on the quantizers and GEMMs.
export PYTHONUNBUFFERED=1
OUT=${OUT:-.}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
timeout 330 python3 bench/gemm_variants.py --variants "" --shapes 3584x10752,14336x3584,3584x14336 \
  --ms 32,512,2048,8192 --json "$OUT/fp8_paths_h100.json" 2>&1 | grep -v Warning
python3 bench/quantizer_profile.py --M 8192 --K 3584 2>&1 | tail -2   # compile outside ncu
timeout 200 ncu --clock-control none -k regex:"_quantize_act|_w4a4" --launch-skip 0 --launch-count 4 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
  --section WarpStateStats --section SchedulerStats \
  python3 bench/quantizer_profile.py --M 8192 --K 3584 > "$OUT/ncu_quantizer.txt" 2>&1
grep -E "^  _|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Registers Per|Achieved Occupancy|Theoretical Occupancy|Stall|Warp Cycles Per Issued|Block Limit|Grid Size|Block Size|Dynamic Shared|Local" "$OUT/ncu_quantizer.txt" | head -150
