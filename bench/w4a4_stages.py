"""Where a W4A4 Linear's GPU time goes at the product's slice sizes, and how kernel 1's launch
(row block, warps, K splits) changes it, the GEMM's epilogue included (it sums kernel 1's split
partials of the low-rank projection): graph-replayed ms per stage and per variant, beside bf16 cuBLAS.

    python3 bench/w4a4_stages.py --json out.json [--ms 2048,1152,512]

Rows: the Infinity-8B block layers (qkv 3584->10752, proj / cross-attention q and proj 3584->3584,
fc1 3584->14336, fc2 14336->3584). Per row: bf16 matmul; the default W4A4 forward; its stages alone
(row pass + kernel 1, the int8 weight workspace); then the whole forward again with kernel 1's K splits
forced (S; --splits, up to one 64-wide group per program) and its row block / warps forced (BM/W).
"""
import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import _layer             # noqa: E402
from kernels_under_test import gemm_module      # noqa: E402

BLOCK_SHAPES = [(3584, 10752, False), (3584, 3584, True), (3584, 14336, True), (14336, 3584, True)]


def _ms(fn):
    import triton.testing as tt
    return tt.do_bench_cudagraph(fn, rep=50, return_mode="median")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="2048,1152,512")
    ap.add_argument("--json", default=None)
    ap.add_argument("--splits", default="1,2,4,8,G//4,G//2,G",
                    help="kernel 1's K splits to force, each a number or G, G//2, G//4 (G: the K groups)")
    a = ap.parse_args()
    mod = gemm_module()
    splits0, launch0 = mod._splits, mod._quantize_launch
    rows = []
    for K, N, bias in BLOCK_SHAPES:
        layer = _layer(K, N, bias, 0)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        for M in (int(m) for m in a.ms.split(",")):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            y = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            mod.w4a4_linear(x, layer, out=y)                      # autotune outside the timed region
            r = {"K": K, "N": N, "M": M, "path": mod.path_for(x, layer)}
            r["bf16_ms"] = _ms(lambda: torch.matmul(x, w.t(), out=y))
            r["w4a4_ms"] = _ms(lambda: mod.w4a4_linear(x, layer, out=y))
            r["quantize_ms"] = _ms(lambda: mod.quantize_activations(x, layer, i8=True))
            BM, warps = launch0(M, "mq")
            r["default_launch"] = {"BM": BM, "warps": warps, "S": splits0(M, K // 64, BM)}
            wu = layer.weight_units()
            wq = torch.empty(N, K, dtype=torch.int8, device="cuda")
            r["unpack_ms"] = _ms(lambda: mod._UNPACK_I8((-(-N // 64), K // 64),
                                                        (layer.qweight, layer.wscales, wu, wq, N, K),
                                                        dict(BLOCK_N=64, GROUP=64)))
            variants = {}
            try:
                # a fixed count, or a share of the K groups (G/2: the default's 2 groups per program at small M;
                # G: one group per program, the shortest serial chain)
                G = K // 64
                shares = {"G": G, "G//2": G // 2, "G//4": G // 4}
                for S in sorted({min(G, shares[t] if t in shares else int(t)) for t in a.splits.split(",")}):
                    mod._splits = lambda M_, G_, bm_, S=S: min(S, G_)
                    mod.w4a4_linear(x, layer, out=y)
                    variants[f"S={S}"] = (_ms(lambda: mod.quantize_activations(x, layer, i8=True)),
                                          _ms(lambda: mod.w4a4_linear(x, layer, out=y)))
                mod._splits = splits0
                for bm, wp in ((16, 4), (32, 4), (64, 4), (64, 8), (128, 8)):
                    mod._quantize_launch = lambda M_, layout, bm=bm, wp=wp: (bm, wp)
                    mod.w4a4_linear(x, layer, out=y)
                    variants[f"BM={bm}/W={wp}"] = (_ms(lambda: mod.quantize_activations(x, layer, i8=True)),
                                                   _ms(lambda: mod.w4a4_linear(x, layer, out=y)))
            finally:
                mod._splits, mod._quantize_launch = splits0, launch0
            r["variants"] = {k: {"quantize_ms": v[0], "w4a4_ms": v[1]} for k, v in variants.items()}
            rows.append(r)
            best = min(variants.items(), key=lambda kv: kv[1][1])
            print(f"{K:6d}->{N:<6d} M={M:5d} {r['path']:>4} | bf16 {r['bf16_ms']:.4f} | w4a4 {r['w4a4_ms']:.4f} "
                  f"(x{r['bf16_ms'] / r['w4a4_ms']:.2f}) = quantize {r['quantize_ms']:.4f} + unpack {r['unpack_ms']:.4f} "
                  f"+ gemm ~{r['w4a4_ms'] - r['quantize_ms'] - (r['unpack_ms'] if r['path'] == 'i8w' else 0):.4f} "
                  f"| default {r['default_launch']} | best {best[0]}: {best[1][1]:.4f} (quantize {best[1][0]:.4f})",
                  flush=True)
            print("     " + "  ".join(f"{k}: {v[0]:.4f}/{v[1]:.4f}" for k, v in variants.items()), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
