"""The i8d GEMM (in-register weights against de-interleaved activations) against the i8 one on the GPU: the
same int32 sums and epilogue, so the outputs must be equal bit for bit, and both within 4e-3 of the float64
reference's dequantized computation (the bf16 outputs' rounding alone is ~1.7e-3 relative). Also what each path's tuned launch was.

    python3 bench/i8d_check.py --ms 2,32,128,288,512,1152,2048 [--json out.json]
"""
import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import SHAPES_8B, _layer      # noqa: E402
from kernels_under_test import gemm_module         # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="2,32,128,288,512,1152,2048")
    ap.add_argument("--shapes", default="3584x10752,3584x3584,3584x14336,14336x3584")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    mod = gemm_module()
    rows = []
    for K, N, bias in SHAPES_8B:
        if f"{K}x{N}" not in a.shapes.split(","):
            continue
        layer = _layer(K, N, bias, 0)
        w = layer.dequantized_weight().double()
        for M in (int(m) for m in a.ms.split(",")):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16) * 2
            outs = {}
            for p in ("i8", "i8d"):
                y = torch.full((M, N), float("nan"), device="cuda", dtype=torch.bfloat16)
                mod.w4a4_linear(x, layer, out=y, path=p)
                outs[p] = y
            from var_gen_ros.quant.int4 import fake_quant_int4
            from var_gen_ros.quant.w4a4 import smooth_input
            xs = smooth_input(x, layer.smooth)
            ref = fake_quant_int4(xs, 64).double() @ w.t()
            ref += (xs.double() @ layer.lora_down.double()) @ layer.lora_up.double().t()
            if layer.bias is not None:
                ref += layer.bias.double()
            r = {"K": K, "N": N, "M": M, "equal": bool(torch.equal(outs["i8"], outs["i8d"])),
                 **{f"rel_{p}": ((o.double() - ref).norm() / ref.norm()).item() for p, o in outs.items()}}
            rows.append(r)
            print(json.dumps(r), flush=True)
    bad = [r for r in rows if not r["equal"] or max(r["rel_i8"], r["rel_i8d"]) > 4e-3]
    print("FAILED" if bad else "all equal and within 4e-3", len(rows), "cases")
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
