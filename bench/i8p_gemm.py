"""The W4A4 layer with `i8p_gemm` (kernels/i8_mainloop_gluon.py: the INT8 wgmma on the packed weights, their codes
made in the K loop, no workspace) against the product's Triton path at the same rows (i8 in registers below 257 rows,
i8w with its unpack kernel from there) and bf16 cuBLAS, on the 8B block shapes at the rows of a 1024² generation's
scales 2-9 (32-2048 with CFG). Whole layers (kernel 1 + GEMM) through `w4a4_linear`, then the i8p GEMM alone at every
launch it may take (swapped or not, K split 1-8 ways), so that `i8p_tile`'s picks can be checked against the best.
CUDA-graph replay medians, µs; each i8p output checked against the Triton forward (relative error).

    python3 bench/i8p_gemm.py [--ms 32,72,128,288,512,1152,2048,4096] [--json out.json]

"product (Triton ...)" is the Triton GEMMs alone (the Gluon i8w GEMM, the product's default from 513 rows on sm_90, off
here: bench/i8_mainloop.py times it); "product with i8p" takes i8p at every row count asked for (`I8P_MAX_M` widened to
the largest), so that the times say where its range should end.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from bench.edge_proof import write_json           # noqa: E402
from bench.w4a4_stages import BLOCK_SHAPES, _ms    # noqa: E402
from var_gen_ros.quant.dispatch import kernel_module   # noqa: E402


def launches(glu, M: int, N: int, K: int, sms: int, ws: bool = False) -> dict:
    """name -> i8p tile: `i8p_tile`'s pick, then the swapped and unswapped tiles with K split 1-8 ways (at 129-512 rows
    swapped in x tiles of 256, 4 and 2 stages), 128 x 256, and
    128 x 128 in 3 stages under 128 registers (two programs an SM); with `ws` also the warp-specialized kernel at the
    pick and at the unsplit tiles."""
    out = {"pick": glu.i8p_tile(M, N, K, sms)}
    if ws:
        out["ws pick"] = dict(out["pick"], ws=True)
    bm = max(32, 1 << (M - 1).bit_length()) if M <= 256 else None
    for split in ((1, 2, 4, 8) if M <= 512 else (1, 2)):
        if bm is not None:
            out[f"swap 64x{bm} s{split}"] = dict(swap=True, block_m=bm, block_n=64, num_warps=4,
                                                 instr_n=min(bm, 128), split_k=split)
        out[f"128x128 s{split}"] = dict(swap=False, block_m=128, block_n=128, num_warps=8, instr_n=128, split_k=split)
    if 128 < M <= 512:     # swapped, the x rows in tiles of 256 (VAR_GEN_W4A4_I8P_SWAP256_MAX_M), 4 and 2 stages
        for st in (4, 2):
            out[f"swap 64x256 s1 st{st}"] = dict(swap=True, block_m=256, block_n=64, num_warps=4, instr_n=128,
                                                 split_k=1, stages=st)
    out["128x256 s1"] = dict(swap=False, block_m=128, block_n=256, num_warps=8, instr_n=128, split_k=1)
    # 3 stages and 128 registers: two 128 x 128 programs an SM (98 KB of shared memory each)
    out["128x128 s1 st3 r128"] = dict(out["128x128 s1"], stages=3, maxnreg=128)
    if ws:
        out.update({f"ws {k}": dict(t, ws=True) for k, t in list(out.items())
                    if k.endswith(" s1") and t["block_n"] <= 128 and not k.startswith("ws") and "maxnreg" not in t})
    return {k: t for k, t in out.items() if glu.split_k_fits(K, t["split_k"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="32,72,128,288,512,1152,2048,4096")
    ap.add_argument("--json", default="")
    ap.add_argument("--ws", action="store_true", help="also the warp-specialized kernel's launches")
    a = ap.parse_args()
    from test_kernels_gpu import _layer
    gm = kernel_module("w4a4_gemm_triton")
    glu = gm._gluon()
    gm.GLUON_I8W = False
    gm.I8P_MAX_M = max(gm.I8P_MAX_M, max(int(m) for m in a.ms.split(",")))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for K, N, bias in BLOCK_SHAPES:
        layer = _layer(K, N, bias, 0)
        act = "gelu_tanh" if N == 4 * K else None
        wb = torch.randn(N, K, dtype=torch.bfloat16, device="cuda")
        wu = layer.weight_units()
        for M in (int(m) for m in a.ms.split(",")):
            x = torch.randn(M, K, dtype=torch.bfloat16, device="cuda")
            y = torch.empty(M, N, dtype=torch.bfloat16, device="cuda")
            gm.GLUON_I8P = False
            base = gm.w4a4_linear(x, layer, act=act).float()
            t = {"bf16 cuBLAS": _ms(lambda: torch.matmul(x, wb.t(), out=y)),
                 "product (Triton " + gm.path_for(x, layer) + ")": _ms(lambda: gm.w4a4_linear(x, layer, out=y, act=act)),
                 "kernel 1": _ms(lambda: gm.quantize_activations(x, layer, i8=True))}
            gm.GLUON_I8P = True
            applies = gm.gluon_i8p_applies(x, layer)
            if applies:
                t["product with i8p"] = _ms(lambda: gm.w4a4_linear(x, layer, out=y, act=act))
            gm.GLUON_I8P = False
            q, ux, lr = gm.quantize_activations(x, layer, i8=True)
            err = {}
            for name, tile in launches(glu, M, N, K, sms, a.ws).items():
                split = tile["split_k"]
                ws = torch.empty(split, M, N, dtype=torch.int32, device="cuda")
                cnt = torch.zeros(4096, dtype=torch.int32, device="cuda")
                run = lambda: glu.i8p_gemm(q, layer.qweight, layer.wscales, wu, ux, lr[0], layer.lora_up, layer.bias,
                                           1 if act else 0, y, tile=tile, ws=ws, cnt=cnt)
                y.fill_(float("nan"))
                run()
                err[name] = float(((y.float() - base).norm() / base.norm()).item())
                t[f"i8p gemm {name}"] = _ms(run)
            us = {k: 1e3 * v for k, v in t.items()}
            best = min((k for k in us if k.startswith("i8p gemm ")), key=us.get)
            row = dict(K=K, N=N, M=M, us=us, rel_err_vs_triton=err, best_i8p=best, i8p_applies=applies)
            rows.append(row)
            print(f"{K:>5} -> {N:<5} M {M:>5}: " + ", ".join(f"{k} {v:.1f}" for k, v in us.items())
                  + f" | best {best}; max rel err vs Triton {max(err.values()):.2e}", flush=True)
    write_json(a.json, dict(device=torch.cuda.get_device_name(), sms=sms, rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
