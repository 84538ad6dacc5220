"""The CUDA C++ small-M W4A4 kernels (GEMM: path "i8s", kernels/w4a4_small_m.cu; kernel 1:
kernels/w4a4_quantize_small_m.cu) against the Triton i8 path and bf16 cuBLAS, side by side in one process, every
Infinity-8B Linear shape, M <= 32 (CUDA-graph replay, median):

* the whole W4A4 product (kernel 1 + GEMM) on the i8s path with its tuned launch, the kernel alone with each
  (warps, splits) of the sweep, on the Triton i8 path (autotuned), and torch.matmul in bf16; both W4A4 paths
  with the CUDA kernel 1 (where it takes the call) and with the Triton one;
* the GEMM alone: the i8s kernel on kernel 1's precomputed outputs, and kernel 1 alone, Triton and CUDA (whose
  codes and units must equal the Triton kernel's bit for bit: `k1_equal`);
* the default launches again with the weights cold in the L2 (copies of the layer, as in a generation);
* on sm_90, the same product with the GEMM as a programmatic dependent launch (VAR_GEN_W4A4_PDL; warm and cold);
* each launch's relative error against the reference (`W4A4Linear.reference_forward`), so a wrong launch
  shows in the same table.

    python3 bench/small_m_sweep.py --ms 1,2,8,16,32 --json out.json
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


def _ms(fn):
    import triton.testing as tt
    return tt.do_bench_cudagraph(fn, rep=100, return_mode="median")


def _rel(y, ref):
    return ((y.float() - ref).norm() / ref.norm()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", default="1,2,8,16,32")
    ap.add_argument("--shapes", default=None, help="KxN,... (default: every 8B shape)")
    ap.add_argument("--splits", default="1,2,4,8", help="K slices across blocks to sweep (besides the default)")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--cold", type=int, default=1, help="also time the defaults with the weights cold in the L2")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from kernels_under_test import gemm_module
    mod = gemm_module()
    sm = mod.small_m
    if sm.extension() is None:
        raise SystemExit(f"the small-M kernel did not build: {sm.build_status()}")
    ms = [int(m) for m in args.ms.split(",")]
    rows = []
    print(f"{'K':>6} {'N':>6} {'M':>3} | {'bf16':>7} {'i8':>7} {'i8s':>7} {'x bf16':>6} {'x i8':>5} | "
          f"{'i8 tk1':>7} {'i8s tk1':>7} | {'k1':>6} {'k1 cu':>6} {'k1 =':>5} {'gemm':>6} | tuned warps,splits | "
          f"sweep (warps,splits: µs) | max rel err")
    for K, N, bias in SHAPES_8B:
        if args.shapes and f"{K}x{N}" not in args.shapes.split(","):
            continue
        layer = _layer(K, N, bias, 0)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        wu = layer.weight_units()
        G = K // 64
        for M in ms:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16) * 2
            ref = layer.reference_forward(x).float()
            y_b = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            y = torch.empty_like(y_b)
            r = {"K": K, "N": N, "M": M, "default_path": mod.path_for(x, layer)}
            r["bf16_ms"] = _ms(lambda: torch.matmul(x, w.t(), out=y_b))
            default_k1 = mod.QUANT_CUDA_MAX_M
            pdl_default = sm.PDL
            sm.PDL = False               # the i8s columns without the programmatic dependent launch, its own below
            for tag, limit in (("", sm.MAX_M), ("_triton_k1", 0)):   # kernel 1: the CUDA one, then Triton's
                mod.QUANT_CUDA_MAX_M = limit
                y.fill_(float("nan"))
                mod.w4a4_linear(x, layer, out=y, path="i8")        # autotune outside the timed region
                r[f"i8{tag}_rel"] = _rel(y, ref)
                r[f"i8{tag}_ms"] = _ms(lambda: mod.w4a4_linear(x, layer, out=y, path="i8"))
                y.fill_(float("nan"))
                mod.w4a4_linear(x, layer, out=y, path="i8s")
                r[f"i8s{tag}_rel"] = _rel(y, ref)
                r[f"i8s{tag}_ms"] = _ms(lambda: mod.w4a4_linear(x, layer, out=y, path="i8s"))
            # the GEMM as a programmatic dependent launch (VAR_GEN_W4A4_PDL=1, sm_90): its blocks start during
            # kernel 1 and fetch the weights into the L2 (kernels/w4a4_small_m.cu)
            if torch.cuda.get_device_capability()[0] >= 9:
                sm.PDL = True
                for tag, limit in (("", sm.MAX_M), ("_triton_k1", 0)):
                    mod.QUANT_CUDA_MAX_M = limit
                    y.fill_(float("nan"))
                    mod.w4a4_linear(x, layer, out=y, path="i8s")
                    r[f"i8s_pdl{tag}_rel"] = _rel(y, ref)
                    r[f"i8s_pdl{tag}_ms"] = _ms(lambda: mod.w4a4_linear(x, layer, out=y, path="i8s"))
                sm.PDL = False
            mod.QUANT_CUDA_MAX_M = default_k1
            r["tuned_launch"] = sm._PICKS.get((sm._bucket(M), N, K, x.device.index))
            q, ux, lr = mod.quantize_activations(x, layer, i8=True)
            r["kernel1_ms"] = _ms(lambda: mod.quantize_activations(x, layer, i8=True))
            if sm.quantize_supports(x, layer):
                inv = mod.inv_smooth(layer)
                qc, uc, lc = sm.quantize(x, layer, inv, mod.INV_QMAX)
                r["k1_equal"] = bool(torch.equal(qc, q) and torch.equal(uc, ux))
                r["k1_lr_rel"] = ((lc.sum(0).double() - lr.sum(0).double()).norm() / lr.sum(0).double().norm()).item()
                r["kernel1_cuda_ms"] = _ms(lambda: sm.quantize(x, layer, inv, mod.INV_QMAX))
            r["i8s_gemm_ms"] = _ms(lambda: sm.w4a4_small_m(q, ux, layer, wu, lr, y))
            sweep = {}
            for wp in (int(v) for v in args.warps.split(",") if v):
                for s in (int(v) for v in args.splits.split(",") if v):
                    if s * wp > G:
                        continue
                    cfg = dict(warps=wp, splits=s)
                    y.fill_(float("nan"))
                    mod.w4a4_linear(x, layer, out=y, path="i8s", config=cfg)
                    err = _rel(y, ref)
                    t = _ms(lambda: sm.w4a4_small_m(q, ux, layer, wu, lr, y, warps=wp, splits=s))
                    sweep[f"{wp},{s}"] = {"gemm_ms": t, "rel": err}
            r["sweep"] = sweep
            if args.cold:
                n = max(2, -(-(160 << 20) // layer.nbytes))
                layers = [copy.deepcopy(layer) for _ in range(n)]
                ws = [torch.randn_like(w) for _ in range(n)]
                for lay in layers:
                    mod.w4a4_linear(x, lay, out=y, path="i8")
                    mod.w4a4_linear(x, lay, out=y, path="i8s")
                r["cold_copies"] = n
                r["cold_bf16_ms"] = _ms(lambda: [torch.matmul(x, wi.t(), out=y_b) for wi in ws]) / n
                r["cold_i8_ms"] = _ms(lambda: [mod.w4a4_linear(x, lay, out=y, path="i8") for lay in layers]) / n
                r["cold_i8s_ms"] = _ms(lambda: [mod.w4a4_linear(x, lay, out=y, path="i8s") for lay in layers]) / n
                if "i8s_pdl_ms" in r:
                    sm.PDL = True
                    r["cold_i8s_pdl_ms"] = _ms(lambda: [mod.w4a4_linear(x, lay, out=y, path="i8s") for lay in layers]) / n
                    sm.PDL = False
                del layers, ws
            sm.PDL = pdl_default
            rows.append(r)
            worst = max([r["i8s_rel"], r["i8s_triton_k1_rel"], r["i8_rel"]] + [v["rel"] for v in sweep.values()]
                        + [r[k] for k in ("i8s_pdl_rel", "i8s_pdl_triton_k1_rel") if k in r])
            print(f"{K:6d} {N:6d} {M:3d} | {r['bf16_ms']*1e3:7.1f} {r['i8_ms']*1e3:7.1f} {r['i8s_ms']*1e3:7.1f} "
                  f"{r['bf16_ms']/r['i8s_ms']:6.2f} {r['i8_ms']/r['i8s_ms']:5.2f} | "
                  f"{r['i8_triton_k1_ms']*1e3:7.1f} {r['i8s_triton_k1_ms']*1e3:7.1f} | {r['kernel1_ms']*1e3:6.1f} "
                  f"{r.get('kernel1_cuda_ms', float('nan'))*1e3:6.1f} {str(r.get('k1_equal', '-')):>5} "
                  f"{r['i8s_gemm_ms']*1e3:6.1f} | {r['tuned_launch']} | "
                  + " ".join(f"{k}: {v['gemm_ms']*1e3:.1f}" for k, v in sweep.items())
                  + (f" | pdl: i8s {r['i8s_pdl_ms']*1e3:.1f} tk1 {r['i8s_pdl_triton_k1_ms']*1e3:.1f}" if "i8s_pdl_ms" in r else "")
                  + (f" | cold: bf16 {r['cold_bf16_ms']*1e3:.1f} i8 {r['cold_i8_ms']*1e3:.1f} i8s {r['cold_i8s_ms']*1e3:.1f}"
                     + (f" i8s pdl {r['cold_i8s_pdl_ms']*1e3:.1f}" if "cold_i8s_pdl_ms" in r else "")
                     if "cold_copies" in r else "")
                  + f" | {worst:.1e}", flush=True)
    print("(µs; i8 / i8s with the CUDA kernel 1 where it takes the call, tk1 = with Triton's kernel 1;"
          " x bf16 = bf16 / i8s, x i8 = i8 / i8s; k1 = Triton kernel 1 alone, k1 cu = the CUDA one, k1 = its codes and"
          " units equal Triton's; gemm = the i8s kernel alone; pdl = i8s with the GEMM as a programmatic dependent"
          " launch, after the CUDA / Triton kernel 1)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
