"""The tiled CUDA C++ W4A4 GEMM (path "i8t", kernels/w4a4_tiled.cu) against the Triton path the product takes at
those rows (i8, or i8w from I8W_MIN_M), the small-M CUDA kernel (i8s, up to 32 rows) and bf16 cuBLAS, side by
side in one process, on the Infinity-8B block shapes (CUDA-graph replay, median):

* the whole W4A4 product (kernel 1 + GEMM) on each path, the i8t launch tuned at its first call;
* the i8t kernel alone on kernel 1's outputs with each (tile, splits) candidate, and its relative error against
  the reference (`W4A4Linear.reference_forward`), so a wrong launch shows in the same table;
* with --cold, the whole products again with the weights cold in the L2 (copies of the layer, as the 40 blocks
  of a generation leave them).

    python3 bench/tiled_sweep.py --ms 2,8,32,72,128,288,512 --json out.json
"""
import argparse
import copy
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import SHAPES_8B, _layer   # noqa: E402


def _ms(fn, rep=60):
    import triton.testing as tt
    return tt.do_bench_cudagraph(fn, rep=rep, return_mode="median")


def _rel(y, ref):
    return ((y.float() - ref).norm() / ref.norm()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", default="2,8,32,72,128,288,512")
    ap.add_argument("--shapes", default="3584x10752,3584x3584,3584x14336,14336x3584", help="KxN,...")
    ap.add_argument("--sweep", type=int, default=1, help="time every (tile, splits) of the i8t kernel alone")
    ap.add_argument("--cold", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from kernels_under_test import gemm_module
    mod = gemm_module()
    sm = mod.small_m
    if sm.extension() is None:
        raise SystemExit(f"the CUDA kernels did not build: {sm.build_status()}")
    rows = []
    print(f"{'K':>6} {'N':>6} {'M':>4} | {'bf16':>6} {'triton':>6} {'i8s':>6} {'i8t':>6} {'x bf16':>6} {'x tri':>5} | "
          f"{'k1':>5} {'gemm':>5} | tuned | sweep (tile,splits: µs) | cold bf16 / triton / i8t | max rel err", flush=True)
    for K, N, bias in SHAPES_8B:
        if f"{K}x{N}" not in args.shapes.split(","):
            continue
        layer = _layer(K, N, bias, 0)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        wu = layer.weight_units()
        for M in (int(m) for m in args.ms.split(",")):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16) * 2
            ref = layer.reference_forward(x).float()
            y_b = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            y = torch.empty_like(y_b)
            triton_path = "i8w" if 0 < mod.I8W_MIN_M <= M else "i8"
            r = {"K": K, "N": N, "M": M, "default_path": mod.path_for(x, layer), "triton_path": triton_path}
            r["bf16_ms"] = _ms(lambda: torch.matmul(x, w.t(), out=y_b))
            paths = [triton_path, "i8t"] + (["i8s"] if M <= sm.MAX_M else [])
            for p in paths:
                y.fill_(float("nan"))
                mod.w4a4_linear(x, layer, out=y, path=p)              # tuning outside the timed region
                r[f"{p}_rel"] = _rel(y, ref)
                r[f"{p}_ms"] = _ms(lambda p=p: mod.w4a4_linear(x, layer, out=y, path=p))
            r["triton_ms"] = r[f"{triton_path}_ms"]
            r["tuned_launch"] = sm._TILED_PICKS.get((sm._bucket(M), N, K, x.device.index))
            q, ux, lr = mod.quantize_activations(x, layer, i8=True)
            r["kernel1_ms"] = _ms(lambda: mod.quantize_activations(x, layer, i8=True))
            r["i8t_gemm_ms"] = _ms(lambda: sm.w4a4_tiled(q, ux, layer, wu, lr, y))
            sweep = {}
            if args.sweep:
                for tile, s in sm.tiled_candidates(N, K):
                    y.fill_(float("nan"))
                    sm.w4a4_tiled(q, ux, layer, wu, lr, y, tile=tile, splits=s)
                    err = _rel(y, ref)
                    t = _ms(lambda: sm.w4a4_tiled(q, ux, layer, wu, lr, y, tile=tile, splits=s), rep=30)
                    sweep[f"{tile},{s}"] = {"gemm_ms": t, "rel": err}
            r["sweep"] = sweep
            if args.cold:
                n = max(2, -(-(160 << 20) // layer.nbytes))
                layers = [copy.deepcopy(layer) for _ in range(n)]
                ws = [torch.randn_like(w) for _ in range(n)]
                for lay in layers:
                    mod.w4a4_linear(x, lay, out=y, path=triton_path)
                    mod.w4a4_linear(x, lay, out=y, path="i8t")
                r["cold_copies"] = n
                r["cold_bf16_ms"] = _ms(lambda: [torch.matmul(x, wi.t(), out=y_b) for wi in ws]) / n
                r["cold_triton_ms"] = _ms(lambda: [mod.w4a4_linear(x, lay, out=y, path=triton_path) for lay in layers]) / n
                r["cold_i8t_ms"] = _ms(lambda: [mod.w4a4_linear(x, lay, out=y, path="i8t") for lay in layers]) / n
                del layers, ws
            rows.append(r)
            worst = max([r[f"{p}_rel"] for p in paths] + [v["rel"] for v in sweep.values()])
            i8s = f"{r['i8s_ms']*1e3:6.1f}" if "i8s_ms" in r else f"{'-':>6}"
            print(f"{K:6d} {N:6d} {M:4d} | {r['bf16_ms']*1e3:6.1f} {r['triton_ms']*1e3:6.1f} {i8s} {r['i8t_ms']*1e3:6.1f} "
                  f"{r['bf16_ms']/r['i8t_ms']:6.2f} {r['triton_ms']/r['i8t_ms']:5.2f} | {r['kernel1_ms']*1e3:5.1f} "
                  f"{r['i8t_gemm_ms']*1e3:5.1f} | {r['tuned_launch']} | "
                  + " ".join(f"{k}: {v['gemm_ms']*1e3:.1f}" for k, v in sweep.items())
                  + (f" | {r['cold_bf16_ms']*1e3:.1f} / {r['cold_triton_ms']*1e3:.1f} / {r['cold_i8t_ms']*1e3:.1f}"
                     if "cold_copies" in r else "")
                  + f" | {worst:.1e}", flush=True)
    print("(µs; x bf16 = bf16 / i8t, x tri = the Triton path / i8t; k1 = kernel 1 alone, gemm = the i8t kernel alone "
          "with its tuned launch)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
