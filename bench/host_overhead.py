"""Host (CPU) cost of one eager W4A4 linear call at small M, where the GPU work is ~20-40 µs and the
launches dominate: per-call wall time over many back-to-back calls (one sync at the end) next to bf16
`torch.matmul`, and a cProfile of the W4A4 calls (top functions by own time).

    python3 bench/host_overhead.py --json out.json --profile out_profile.txt
"""
import argparse
import cProfile
import io
import json
import os
import pstats
import re
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import _layer   # noqa: E402


def per_call_us(fn, n: int) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="3584x3584,3584x10752")
    ap.add_argument("--ms", default="2,32")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", default=None)
    a = ap.parse_args()
    from var_gen_ros.quant.dispatch import w4a4_kernel
    rows, prof_text = [], ""
    for shape in a.shapes.split(","):
        K, N = map(int, shape.split("x"))
        layer = _layer(K, N, True, 0)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        for M in map(int, a.ms.split(",")):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            fn = w4a4_kernel(x)
            y = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            fn(x, layer, out=y)                                   # autotune first
            r = {"K": K, "N": N, "M": M,
                 "bf16_matmul_us": per_call_us(lambda: torch.matmul(x, w.t(), out=y), a.calls),
                 "w4a4_us": per_call_us(lambda: fn(x, layer, out=y), a.calls),
                 "w4a4_alloc_out_us": per_call_us(lambda: fn(x, layer), a.calls)}
            rows.append(r)
            print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
            if not prof_text:
                pr = cProfile.Profile()
                pr.enable()
                for _ in range(500):
                    fn(x, layer, out=y)
                torch.cuda.synchronize()
                pr.disable()
                s = io.StringIO()
                pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(30)
                prof_text = f"# {K}x{N}, M={M}, 500 calls\n" + s.getvalue()
    print(prof_text[:6000])
    if a.json:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, open(a.json, "w"), indent=1)
    if a.profile:   # file names relative to site-packages and the repository (no machine paths)
        prof_text = re.sub(r"\S*site-packages/", "", prof_text).replace(ROOT + os.sep, "")
        open(a.profile, "w").write(prof_text)


if __name__ == "__main__":
    main()
