"""One W4A4 layer call, for Nsight Compute (`ncu ... python3 bench/w4a4_profile.py --path fp8 ...`):
builds an Infinity-8B-shaped layer, warms the kernels up (autotuning, compiles), then runs `--calls`
forwards of the given path and launch.

    ncu --clock-control none -k regex:_w4a4_fp8 --launch-skip 3 --launch-count 1 --section SpeedOfLight \\
        python3 bench/w4a4_profile.py --M 2 --path fp8 --config '{"BLOCK_M":16,"BLOCK_N":64,"SWAP":true,"num_warps":4,"num_stages":4}'
"""
import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import _layer                      # noqa: E402
from var_gen_ros.quant.dispatch import kernel_module    # noqa: E402

gm = kernel_module("w4a4_gemm_triton")

ap = argparse.ArgumentParser()
ap.add_argument("--M", type=int, default=2)
ap.add_argument("--K", type=int, default=3584)
ap.add_argument("--N", type=int, default=3584)
ap.add_argument("--path", default=None)
ap.add_argument("--config", default=None, help="JSON launch, e.g. '{\"BLOCK_M\":16,...}'")
ap.add_argument("--calls", type=int, default=3)
a = ap.parse_args()
layer = _layer(a.K, a.N, True, 0)
x = torch.randn(a.M, a.K, device="cuda", dtype=torch.bfloat16)
cfg = json.loads(a.config) if a.config else None
for _ in range(3):
    y = gm.w4a4_linear(x, layer, path=a.path, config=cfg)
torch.cuda.synchronize()
for _ in range(a.calls):
    y = gm.w4a4_linear(x, layer, path=a.path, config=cfg)
torch.cuda.synchronize()
print("done", a, float(y.float().norm()))
