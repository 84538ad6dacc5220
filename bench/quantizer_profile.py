"""Run the activation quantizer (INT8 de-interleaved codes and FP8 natural-order codes) and the W4A4
GEMMs of one layer a few times, for a profiler (ncu) to read; prints nothing but a checksum.

    ncu --clock-control none -k regex:_quantize_act python3 bench/quantizer_profile.py --M 8192 --K 3584
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import _layer                                          # noqa: E402
from var_gen_ros.quant.dispatch import kernel_module                            # noqa: E402

quantize_activations = kernel_module("w4a4_gemm_triton").quantize_activations
w4a4_linear = kernel_module("w4a4_gemm_triton").w4a4_linear

ap = argparse.ArgumentParser()
ap.add_argument("--M", type=int, default=8192)
ap.add_argument("--K", type=int, default=3584)
ap.add_argument("--N", type=int, default=10752)
a = ap.parse_args()
layer = _layer(a.K, a.N, True, 0)
x = (torch.randn(a.M, a.K, device="cuda") * 2).bfloat16()
for fp8 in (False, True):
    q, sx, lr = quantize_activations(x, layer, fp8=fp8)
    # a fixed tile: no autotuning launches under the profiler
    y = w4a4_linear(x, layer, path="fp8" if fp8 else "int8",
                    config=dict(BLOCK_M=128, BLOCK_N=128, SWAP=False, num_warps=8, num_stages=3))
torch.cuda.synchronize()
print("checksum", float(sx.sum()), float(y.float().abs().mean()))
