"""W4A4 GEMM kernel vs bf16 cuBLAS (torch.matmul) vs the PyTorch reference, every Infinity-8B Linear
shape and M in {2, 32, 128, 512, 2048, 8192}; median times (triton.testing.do_bench), side by side.

    python3 bench/kernels.py --json out.json
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test"))

from test_kernels_gpu import MS, SHAPES_8B, _layer   # noqa: E402


def main():
    import triton.testing as tt
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--reference", action="store_true", help="also time the dequantize+matmul reference")
    a = ap.parse_args()
    from var_gen_ros.quant.dispatch import w4a4_kernel
    rows = []
    print(f"{'K':>6} {'N':>6} {'M':>5} | {'bf16 ms':>8} {'w4a4 ms':>8} {'speed-up':>8} {'w4a4 TOPS':>9} | {'ref ms':>8}")
    for K, N, bias in SHAPES_8B:
        layer = _layer(K, N, bias, 0)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        for M in MS:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            fn = w4a4_kernel(x)
            t_bf16 = tt.do_bench(lambda: torch.matmul(x, w.t()), warmup=25, rep=100, return_mode="median")
            t_q = tt.do_bench(lambda: fn(x, layer), warmup=25, rep=100, return_mode="median")
            t_ref = (tt.do_bench(lambda: layer.reference_forward(x), warmup=5, rep=20, return_mode="median")
                     if a.reference else None)
            r = {"K": K, "N": N, "M": M, "bf16_ms": t_bf16, "w4a4_ms": t_q, "speedup": t_bf16 / t_q,
                 "w4a4_tops": 2 * M * N * K / t_q / 1e9, "ref_ms": t_ref}
            rows.append(r)
            print(f"{K:6d} {N:6d} {M:5d} | {t_bf16:8.4f} {t_q:8.4f} {t_bf16 / t_q:8.2f} {r['w4a4_tops']:9.1f} | "
                  f"{t_ref if t_ref is None else round(t_ref, 4)}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
