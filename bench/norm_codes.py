"""The modulated LayerNorm making its W4A4 layer's codes (`norm_codes`, VAR_GEN_W4A4_NORM_CODES) against the plain
LayerNorm then kernel 1, timed as the pair the product runs: the norm, then the layer's forward (for 3584 -> 10752 the
qkv projection with the attention's input epilogue where the product takes it, from 257 rows).

Per block shape fed by a norm (qkv, the cross-attention's query, fc1 with its GELU) and row count (the CFG batch's
tokens of the 1024² scales and their 2048-token slices), CUDA-graph replay medians, both forms interleaved twice in
one process (the second round kept), µs, and their ratio; the outputs of the two forms compared.

    python3 bench/norm_codes.py --ms 32,128,512,1152,2048,4096 --json out.json
    python3 bench/norm_codes.py --ms 128,1152,4096 --sweep "1,8;2,8;4,8;4,16;8,16" --json sweep.json
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from bench.edge_proof import write_json          # noqa: E402
from bench.w4a4_stages import _ms                # noqa: E402
from kernels_under_test import adaln_module, gemm_module   # noqa: E402
from test_kernels_gpu import _layer             # noqa: E402

SHAPES = ((3584, 10752, False, None), (3584, 3584, True, None), (3584, 14336, True, "gelu_tanh"))


def sweep(gm, ad, ms, launches, path) -> int:
    """The norm with codes alone per launch (rows per program, warps) against the plain norm and kernel 1, µs."""
    K = 3584
    layer = _layer(K, 3584, True, 0)
    rows = []
    for M in ms:
        x = torch.randn(2, M // 2, K, device="cuda") * 3 + 0.5
        s, sh = torch.randn(2, 1, K, device="cuda") * 0.3, torch.randn(2, 1, K, device="cuda")
        y2 = ad.adaln(x, 1e-6, torch.bfloat16, None, None, s, sh).reshape(-1, K)
        t = {"adaln": _ms(lambda: ad.adaln(x, 1e-6, torch.bfloat16, None, None, s, sh)),
             "kernel1": _ms(lambda: gm.quantize_activations(y2, layer, i8=True)),
             "low_rank_input": _ms(lambda: gm.low_rank_input(y2, layer))}
        for launch in launches:
            t[f"norm_codes {launch[0]},{launch[1]}"] = _ms(
                lambda launch=launch: gm.norm_codes(x, 1e-6, torch.bfloat16, layer, None, None, s, sh, launch=launch))
        t = {k: 1e3 * v for k, v in t.items()}
        rows.append(dict(M=M, us=t))
        print(f"M {M:>5}: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()), flush=True)
    write_json(path, dict(device=torch.cuda.get_device_name(), sweep=rows))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="32,128,512,1152,2048,4096")
    ap.add_argument("--json", default="")
    ap.add_argument("--sweep", default="", help="launches (rows,warps;...) of the norm with codes alone, at --ms rows")
    a = ap.parse_args()
    gm, ad = gemm_module(), adaln_module()
    if a.sweep:
        return sweep(gm, ad, [int(m) for m in a.ms.split(",")], [tuple(int(v) for v in l.split(","))
                                                                  for l in a.sweep.split(";")], a.json)
    H, c = 28, 128
    rows = []
    for K, N, bias, act in SHAPES:
        layer = _layer(K, N, bias, 0)
        for M in (int(m) for m in a.ms.split(",")):
            n = M // 2
            x = torch.randn(2, n, K, device="cuda") * 3 + 0.5
            s, sh = torch.randn(2, 1, K, device="cuda") * 0.3, torch.randn(2, 1, K, device="cuda")
            qkv = N == 3 * K and gm.qkv_fusable(x, layer, c)
            if qkv:
                ang = torch.rand(n, c // 2, device="cuda") * 100
                rope = torch.stack([ang.cos(), ang.sin()])
                bias_qkv, scale_mul = torch.randn(N, device="cuda"), torch.rand(H, device="cuda") * 5
                bufs = [torch.empty(2, H, n, c, device="cuda", dtype=dt)
                        for dt in (torch.bfloat16, torch.float32, torch.float32)]

            def pair(codes, keep):
                y = (gm.norm_codes(x, 1e-6, torch.bfloat16, layer, None, None, s, sh) if codes
                     else ad.adaln(x, 1e-6, torch.bfloat16, None, None, s, sh))
                if qkv:
                    gm.w4a4_qkv_rope(y, layer, bias_qkv, scale_mul, rope, *bufs, 0)
                    out = bufs[0].clone() if keep is not None else None
                else:
                    out = gm.w4a4_linear(y, layer, act=act)
                if keep is not None:
                    keep.append((y, out))
            t = {}
            for codes in (False, True):          # warm: compile, tune
                pair(codes, None)
            for _ in range(2):
                for codes in (False, True):
                    t["norm_codes" if codes else "plain"] = 1e3 * _ms(lambda codes=codes: pair(codes, None))
            y2 = ad.adaln(x, 1e-6, torch.bfloat16, None, None, s, sh).reshape(-1, K)
            t["kernel1"] = 1e3 * _ms(lambda: gm.quantize_activations(y2, layer, i8=True))
            t["low_rank_input"] = 1e3 * _ms(lambda: gm.low_rank_input(y2, layer))
            t["adaln"] = 1e3 * _ms(lambda: ad.adaln(x, 1e-6, torch.bfloat16, None, None, s, sh))
            t["norm_codes_alone"] = 1e3 * _ms(lambda: gm.norm_codes(x, 1e-6, torch.bfloat16, layer, None, None, s, sh))
            got = []
            pair(False, got)
            pair(True, got)
            (y0, o0), (y1, o1) = got
            diff = float((o1.float() - o0.float()).norm() / o0.float().norm())
            row = dict(K=K, N=N, M=M, path=("qkv " if qkv else "") + gm.path_for(x, layer, rows=M),
                       plain_us=t["plain"], norm_codes_us=t["norm_codes"], speedup=t["plain"] / t["norm_codes"],
                       y_max_diff=float((y0.float() - y1.float()).abs().max()), out_rel_diff=diff,
                       parts_us={k: t[k] for k in ("adaln", "kernel1", "norm_codes_alone", "low_rank_input")})
            rows.append(row)
            print(f"{K:>5} -> {N:<5} M {M:>5} {row['path']:<8} plain {row['plain_us']:7.1f} us  norm codes "
                  f"{row['norm_codes_us']:7.1f} us  {row['speedup']:.3f}x  y max diff {row['y_max_diff']:.1e}  out rel diff "
                  f"{diff:.1e}  (norm {t['adaln']:.1f}, kernel 1 {t['kernel1']:.1f}; norm with codes "
                  f"{t['norm_codes_alone']:.1f}, low-rank input {t['low_rank_input']:.1f})", flush=True)
    write_json(a.json, dict(device=torch.cuda.get_device_name(), rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
