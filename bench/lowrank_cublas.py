"""What kernel 1's low-rank dot costs it, against the same down-projection as one cuBLAS GEMM beside it.

Kernel 1 (the row pass and the quantizer) makes x̂ · L_down (M, 32) with its K splits' partials summed by the split
that finishes a row block last; at 2048 rows and K = 3584 that dot took it from 14 to 24 µs on the H100 (thirty-fourth
session, `bench/quant_ab.py`), for 0.9 GFLOP of bf16x2 tensor-core work. Here, per K of the block shapes and row count,
CUDA-graph replay medians side by side in one process: kernel 1 as the product runs it; kernel 1 with the layer seen
with rank 0 (no dot); the down-projection alone as one cuBLAS bf16 GEMM of x against [L_hi | L_lo] (K, 64), the two
bf16 parts of L_down / λ (its bf16 output makes it a lower bound of what a float32-exact form would take); and those
two in one graph. If the pair is not faster than the product's kernel 1, moving the dot out of kernel 1 cannot pay.
Fortieth session, H100 (docs/results/lowrank_cublas_fortieth_h100.*): the pair 0.69-1.14x kernel 1's time (0.90x at
2048 rows and K = 3584, 1.14x at K = 14336), with a bf16 output 1.7e-3 off; not built (docs/BENCHMARKS.md).

    python3 bench/lowrank_cublas.py --ms 288,512,1152,2048 --json out.json
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
from bench.quant_ab import _WithoutLowRank       # noqa: E402
from bench.w4a4_stages import _ms                # noqa: E402
from kernels_under_test import gemm_module      # noqa: E402
from test_kernels_gpu import _layer             # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="288,512,1152,2048")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    mod = gemm_module()
    rows = []
    for K, N in ((3584, 3584), (14336, 3584)):
        layer = _layer(K, N, True, 0)
        bare = _WithoutLowRank(layer)
        d = layer.lora_down.float() / layer.smooth.float()[:, None]
        hi = d.bfloat16()
        parts = torch.cat([hi, (d - hi.float()).bfloat16()], 1).contiguous()      # (K, 2r)
        for M in (int(m) for m in a.ms.split(",")):
            x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
            out = torch.empty(M, parts.shape[1], device="cuda", dtype=torch.bfloat16)
            mod.quantize_activations(x, layer, i8=True)
            mod.quantize_activations(x, bare, i8=True)
            lr = mod.quantize_activations(x, layer, i8=True)[2][0].float()
            torch.mm(x, parts, out=out)
            r = parts.shape[1] // 2
            mm = out[:, :r].float() + out[:, r:].float()
            t = {}
            for _ in range(2):                   # interleaved twice; the second kept
                t["kernel1"] = _ms(lambda: mod.quantize_activations(x, layer, i8=True))
                t["kernel1_without_low_rank"] = _ms(lambda: mod.quantize_activations(x, bare, i8=True))
                t["cublas_down"] = _ms(lambda: torch.mm(x, parts, out=out))
                t["without_plus_cublas"] = _ms(lambda: (mod.quantize_activations(x, bare, i8=True),
                                                        torch.mm(x, parts, out=out)))
            row = {"K": K, "M": M, "us": {k: v * 1e3 for k, v in t.items()},
                   "cublas_rel_diff": float((mm - lr).norm() / lr.norm())}
            rows.append(row)
            print(f"K={K:6d} M={M:5d} | " + "  ".join(f"{k} {v:6.1f}" for k, v in row["us"].items())
                  + f" | pair/kernel1 {t['without_plus_cublas'] / t['kernel1']:.2f}x"
                  + f" | cuBLAS (bf16 out) vs kernel 1's dot {row['cublas_rel_diff']:.1e}", flush=True)
    write_json(a.json, {"device": torch.cuda.get_device_name(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
