"""Kernel 1 (the activation quantizer, with its row pass) with its low-rank dot "bf16x2i" (1/λ read and L_down
multiplied by it, the default since the thirty-third session) made in kernel 1, against "bf16x2" (L_down divided by λ
per column and group, VAR_GEN_W4A4_LR_INV=0) and against the dot made by the row pass instead (VAR_GEN_W4A4_LR_ROW_PASS,
the default since the thirty-fourth session), side by side in one process, and kernel 1 without its low-rank dot (the
layer seen with rank 0).
Per Infinity-8B block shape and row count: kernel 1 alone and the whole W4A4 forward, CUDA-graph replay medians,
interleaved, whether the codes and units are the same bits, and the largest relative difference of the low-rank
inputs from the default's (the forty-third session's first row-pass attempt had the same codes and units but low-rank
inputs up to 7e-5 off; the others differ by ~5e-7, their float32 sums' order). (The thirty-third
session's first run, at b54b9b7, also timed x loaded one group ahead, since removed: 0.75-0.80x from 1152 rows. The
thirty-fourth session's, at 3552030, also timed both passes' loops given to Triton's pipeliner with 2 and 3 stages,
VAR_GEN_W4A4_QUANT_STAGES, since removed: 0.85-1.20x. The forty-third to forty-fifth sessions', last at 6f8243e,
also timed that row pass in CUDA C++, "row_pass_cuda", VAR_GEN_W4A4_ROW_PASS_CUDA, since removed: 0.94-1.16x.)

    python3 bench/quant_ab.py --ms 512,1152,2048,4096 --json out.json
"""
from __future__ import annotations

import argparse
import contextlib
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


# (LR_INV, LR_ROW_PASS); "default" is the thirty-third session's (the low-rank dot in kernel 1), the row pass's dot
# ("row_pass") the default since the thirty-fourth
VARIANTS = {"default": (True, False), "divide": (False, False), "row_pass": (True, True)}


@contextlib.contextmanager
def row_pass_settings(mod):
    """Yields use(name), which sets the GEMM module's (LR_INV, LR_ROW_PASS) to VARIANTS[name]; the module's own
    settings come back on leaving."""
    old = (mod.LR_INV, mod.LR_ROW_PASS)

    def use(name):
        mod.LR_INV, mod.LR_ROW_PASS = VARIANTS[name]
    try:
        yield use
    finally:
        mod.LR_INV, mod.LR_ROW_PASS = old


def block_inputs(ms: str):
    """(K, N, M, layer, x) per Infinity-8B block shape and row count in `ms` (comma-separated): a random W4A4 layer
    of the shape (the GPU tests' `_layer`) and x (M, K) bf16 of scale 2."""
    for K, N, bias in BLOCK_SHAPES:
        layer = _layer(K, N, bias, 0)
        for M in (int(m) for m in ms.split(",")):
            yield K, N, M, layer, (torch.randn(M, K, device="cuda") * 2).bfloat16()


class _WithoutLowRank:
    """The layer seen with rank 0: kernel 1 without its low-rank dot (HAS_LR off), timed beside the default to
    show what the dot, with its barrier and wait, costs the loop."""
    rank = 0

    def __init__(self, layer):
        self._layer = layer

    def __getattr__(self, name):
        return getattr(self._layer, name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="512,1152,2048,4096")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    mod = gemm_module()
    rows = []
    with row_pass_settings(mod) as use:
        for K, N, M, layer, x in block_inputs(a.ms):
            y = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            r = {"K": K, "N": N, "M": M, "path": mod.path_for(x, layer), "ms": {}}
            outs = {}
            for name in VARIANTS:            # compile and tune outside the timed region
                use(name)
                mod.w4a4_linear(x, layer, out=y)
                outs[name] = mod.quantize_activations(x, layer, i8=True)
            ref = outs["default"]
            r["same_codes_and_units"] = {n: bool(torch.equal(o[0], ref[0]) and torch.equal(o[1], ref[1]))
                                         for n, o in outs.items()}
            r["low_rank_rel_diff"] = {n: float((o[2] - ref[2]).norm() / ref[2].norm()) for n, o in outs.items()}
            for _ in range(2):               # interleaved twice; the second of each kept
                for name in VARIANTS:
                    use(name)
                    r["ms"][name] = {"kernel1": _ms(lambda: mod.quantize_activations(x, layer, i8=True)),
                                     "w4a4": _ms(lambda: mod.w4a4_linear(x, layer, out=y))}
            use("default")
            bare = _WithoutLowRank(layer)
            mod.quantize_activations(x, bare, i8=True)
            r["ms"]["default"]["kernel1_without_low_rank"] = _ms(lambda: mod.quantize_activations(x, bare, i8=True))
            rows.append(r)
            base = r["ms"]["default"]
            print(f"{K:6d}->{N:<6d} M={M:5d} {r['path']:>4} | kernel 1 / w4a4 us: " + "  ".join(
                f"{n} {v['kernel1'] * 1e3:6.1f} ({base['kernel1'] / v['kernel1']:.2f}x) / {v['w4a4'] * 1e3:6.1f}"
                for n, v in r["ms"].items()) + f" | no low-rank {base['kernel1_without_low_rank'] * 1e3:6.1f}"
                  + f" | same bits {all(r['same_codes_and_units'].values())}"
                  + f" | low-rank diff {max(r['low_rank_rel_diff'].values()):.1e}",
                  flush=True)
    write_json(a.json, {"device": torch.cuda.get_device_name(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
