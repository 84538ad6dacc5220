"""The small-M CUDA kernel alone (kernels/w4a4_small_m.cu) against the exact product it computes,
q·(q_w·m)·u_x·u_w + lr·L_up in float64 from kernel 1's own outputs: the largest error relative to the largest
output and how many elements are off by more than 1 % of it (a wrong fragment mapping shows as whole rows or
tokens), per case K,N,M,warps,splits.

    python3 bench/small_m_exact_check.py 256,64,8,4,1 3584,3584,32,8,3 14336,3584,17,4,8
"""
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from kernels_under_test import gemm_module   # noqa: E402
from test_kernels_gpu import _layer           # noqa: E402
from var_gen_ros.quant.int4 import unpack_int4   # noqa: E402


def main():
    mod = gemm_module()
    sm = mod.small_m
    print("built:", sm.extension() is not None, sm.build_status())
    for case in sys.argv[1:]:
        K, N, M, warps, splits = (int(v) for v in case.split(","))
        layer = _layer(K, N, False, seed=1)
        x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
        q, ux, lr = mod.quantize_activations(x, layer, i8=True)
        wu = layer.weight_units()
        m = torch.round(layer.wscales.float() / wu[:, None])
        qw = unpack_int4(layer.qweight).double() * m.double().repeat_interleave(64, 1)
        exact = ((q.double() @ qw.t()) * ux.double()[:, None] * wu.double()[None, :]
                 + lr.sum(0).double() @ layer.lora_up.double().t())
        y = torch.full((M, N), float("nan"), device="cuda", dtype=torch.bfloat16)
        sm.w4a4_small_m(q, ux, layer, wu, lr, y, warps=warps, splits=splits)
        err = (y.double() - exact).abs() / exact.abs().max()
        bad = (err > 1e-2).nonzero()
        print(K, N, M, warps, splits, "max err", f"{err.max().item():.2e}", "bad", bad.shape[0],
              "bad rows mod 16", sorted(set((bad[:, 1] % 16).tolist()))[:16], "bad tokens", sorted(set(bad[:, 0].tolist()))[:16])


if __name__ == "__main__":
    main()
