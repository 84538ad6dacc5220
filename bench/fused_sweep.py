"""The fused small-M W4A4 kernel (`_w4a4_fused_kernel`: quantizer + GEMM + low-rank, split over K, one
launch) against bf16 cuBLAS and the two-kernel path, per Infinity-8B layer shape and small M, over a grid
of launches (row block, N block, K splits, warps, stages), side by side in one run (CUDA-graph replay,
median). Every launch is first checked against the reference forward (relative error <= 1e-3).

    python3 bench/fused_sweep.py --json docs/results/fused_sweep_h100.json
"""
import argparse
import json
import os
import sys

import torch
import triton
import triton.testing as tt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import SHAPES_8B, _layer                          # noqa: E402
import kernels.w4a4_gemm_triton as gm                                    # noqa: E402


def _ms(fn, rep):
    return tt.do_bench_cudagraph(fn, rep=rep, return_mode="median")


def launches(M, K):
    G = K // gm.GROUP
    for bm in (16, 32, 64):
        if bm > max(16, M) or (bm == 64 and M < 64):
            continue
        for bn, warps in ((64, 4), (128, 4), (128, 8), (256, 8)):
            for stages in (2, 3):
                for splits in (1, 2, 4, 8, 16, 32):
                    if splits <= G:
                        yield dict(BLOCK_M=bm, BLOCK_N=bn, GPS=triton.cdiv(G, splits), num_warps=warps,
                                   num_stages=stages)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="2,8,32,64,128")
    ap.add_argument("--shapes", default="")
    ap.add_argument("--rep", type=int, default=20)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    fp8 = torch.cuda.get_device_capability() >= (8, 9)
    fused = "fused-fp8" if fp8 else "fused-int8"
    two = "fp8" if fp8 else "int8"
    rows = []
    for K, N, bias in SHAPES_8B:
        if a.shapes and f"{K}x{N}" not in a.shapes.split(","):
            continue
        layer = _layer(K, N, bias, 0)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        for M in map(int, a.ms.split(",")):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            ref = layer.reference_forward(x).float()
            y = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            gm.w4a4_linear(x, layer, out=y, path=two)              # autotune outside the timed region
            r = {"K": K, "N": N, "M": M, "bf16_ms": _ms(lambda: torch.matmul(x, w.t(), out=y), a.rep),
                 "two_kernel_ms": _ms(lambda: gm.w4a4_linear(x, layer, out=y, path=two), a.rep)}
            gm.w4a4_linear(x, layer, out=y, path=fused)
            r["heuristic"] = gm.fused_launch(M, N, K)
            r["heuristic_ms"] = _ms(lambda: gm.w4a4_linear(x, layer, out=y, path=fused), a.rep)
            r["heuristic_err"] = ((y.float() - ref).norm() / ref.norm()).item()
            sweep = []
            for cfg in launches(M, K):
                y.fill_(float("nan"))
                gm.w4a4_linear(x, layer, out=y, path=fused, config=cfg)
                err = ((y.float() - ref).norm() / ref.norm()).item()
                assert err <= 1e-3, (K, N, M, cfg, err)
                sweep.append(dict(cfg, ms=_ms(lambda: gm.w4a4_linear(x, layer, out=y, path=fused, config=cfg), a.rep),
                                  err=err))
            best = min(sweep, key=lambda c: c["ms"])
            r.update(best=best, sweep=sweep)
            rows.append(r)
            print(f"{K:6d}->{N:6d} M={M:4d} bf16 {r['bf16_ms']:.4f}  two-kernel {r['two_kernel_ms']:.4f} "
                  f"({r['bf16_ms'] / r['two_kernel_ms']:.2f}x)  fused heuristic {r['heuristic_ms']:.4f} "
                  f"({r['bf16_ms'] / r['heuristic_ms']:.2f}x, err {r['heuristic_err']:.1e})  best {best['ms']:.4f} "
                  f"({r['bf16_ms'] / best['ms']:.2f}x) {({k: v for k, v in best.items() if k not in ('ms', 'err')})}",
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
