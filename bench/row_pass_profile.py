"""Kernel 1 (its row pass and quantizer) under Nsight Compute, per variant of bench/quant_ab.py (default: the
product's, "row_pass"): compiled and warmed outside the profiled range, then one call each between cudaProfilerStart
and cudaProfilerStop, so that `ncu --profile-from-start off` reads only those. (The forty-fifth session's run, at
6f8243e, profiled the row pass in CUDA C++ beside it, since removed.)

    ncu --profile-from-start off --clock-control none --set full python3 bench/row_pass_profile.py --k 3584 --ms 512,2048
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from bench.quant_ab import row_pass_settings   # noqa: E402
from kernels_under_test import gemm_module    # noqa: E402
from test_kernels_gpu import _layer           # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=3584)
    ap.add_argument("--n", type=int, default=3584)
    ap.add_argument("--ms", default="2048", help="row counts, comma-separated")
    ap.add_argument("--variants", default="row_pass", help="bench/quant_ab.py's VARIANTS, comma-separated")
    a = ap.parse_args()
    mod = gemm_module()
    layer = _layer(a.k, a.n, False, 0)
    with row_pass_settings(mod) as use:
        for m in (int(m) for m in a.ms.split(",")):
            x = (torch.randn(m, a.k, device="cuda") * 2).bfloat16()       # one x for every variant
            for name in a.variants.split(","):
                use(name)
                for _ in range(3):
                    mod.quantize_activations(x, layer, i8=True)
                torch.cuda.synchronize()
                torch.cuda.profiler.start()
                mod.quantize_activations(x, layer, i8=True)
                torch.cuda.synchronize()
                torch.cuda.profiler.stop()
                print(f"profiled {name} at {a.k}->{a.n} M={m}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
