"""Kernel 1 (the activation quantizer, with its row pass) with VAR_GEN_W4A4_LR_INV off and on, side by side in one
process: "bf16x2" (L_down divided by λ and x̂ made with a division per column, in every program and group) against
"bf16x2i" (both from the kept 1/λ: 28 IEEE divisions per group and thread in the 128-row launch's sm_90 PTX fall to
4, 108 registers to 96; thirty-second session). Per Infinity-8B block shape and row count: kernel 1 alone and the
whole W4A4 forward, CUDA-graph replay medians, and whether the codes and units are the same bits.

    python3 bench/lr_inv_ab.py --ms 512,1152,2048,4096 --json out.json
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
from bench.w4a4_stages import BLOCK_SHAPES, _ms  # noqa: E402
from kernels_under_test import gemm_module      # noqa: E402
from test_kernels_gpu import _layer             # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="512,1152,2048,4096")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    mod = gemm_module()
    rows, old = [], mod.LR_INV
    try:
        for K, N, bias in BLOCK_SHAPES:
            layer = _layer(K, N, bias, 0)
            for M in (int(m) for m in a.ms.split(",")):
                x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
                y = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
                r = {"K": K, "N": N, "M": M, "path": mod.path_for(x, layer)}
                outs = {}
                for inv in (False, True):        # compile and tune outside the timed region
                    mod.LR_INV = inv
                    mod.w4a4_linear(x, layer, out=y)
                    outs[inv] = mod.quantize_activations(x, layer, i8=True)
                r["same_codes_and_units"] = bool(torch.equal(outs[False][0], outs[True][0])
                                                 and torch.equal(outs[False][1], outs[True][1]))
                lr0, lr1 = outs[False][2], outs[True][2]
                r["low_rank_rel_diff"] = float((lr0 - lr1).norm() / lr0.norm()) if lr0 is not None else 0.0
                for rep in range(2):             # interleaved twice; the second of each kept
                    for inv in (False, True):
                        mod.LR_INV = inv
                        r[f"quantize_ms_{int(inv)}"] = _ms(lambda: mod.quantize_activations(x, layer, i8=True))
                        r[f"w4a4_ms_{int(inv)}"] = _ms(lambda: mod.w4a4_linear(x, layer, out=y))
                rows.append(r)
                print(f"{K:6d}->{N:<6d} M={M:5d} {r['path']:>4} | kernel 1 {r['quantize_ms_0'] * 1e3:7.1f} -> "
                      f"{r['quantize_ms_1'] * 1e3:7.1f} us ({r['quantize_ms_0'] / r['quantize_ms_1']:.2f}x) | w4a4 "
                      f"{r['w4a4_ms_0'] * 1e3:7.1f} -> {r['w4a4_ms_1'] * 1e3:7.1f} us | same codes "
                      f"{r['same_codes_and_units']}, low-rank rel diff {r['low_rank_rel_diff']:.1e}", flush=True)
    finally:
        mod.LR_INV = old
    write_json(a.json, {"device": torch.cuda.get_device_name(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
