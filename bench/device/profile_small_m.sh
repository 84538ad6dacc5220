#!/bin/bash
# ncu on the small-M W4A4 kernels (M = 2, 3584 -> 3584): where a weight stream of 6.4 MB spends 30 µs
# (the two-kernel path, no split-K: the BENCHMARKS "Kernels v4" profile; the removed fused kernel's runs are in 40578ba).
S="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section InstructionStats --section MemoryWorkloadAnalysis --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
run() { timeout 150 ncu --clock-control none -k regex:"$1" --launch-skip "$2" --launch-count 1 $S python3 bench/w4a4_profile.py "${@:3}" 2>&1 | grep -v "^==PROF==" | grep -E "^    [A-Z]|stalled" | grep -v "OPT\|INF\|WRN\|Cluster\|Green\|TPC\|Compression\|Persisting\|Function Cache\|Metric Name\|Driver Shared" | head -70; }
echo "=== two-kernel fp8 gemm"; run _w4a4_fp8 3 --M 2 --path fp8 --config '{"BLOCK_M":16,"BLOCK_N":64,"SWAP":true,"num_warps":4,"num_stages":4}'
echo "=== two-kernel quantizer"; run _quantize_act 3 --M 2 --path fp8 --config '{"BLOCK_M":16,"BLOCK_N":64,"SWAP":true,"num_warps":4,"num_stages":4}'
