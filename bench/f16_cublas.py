"""Experiment: the f16 path's exact fp16 operands through cuBLAS instead of the Triton GEMM.

Activation codes × bf16 scales and weight codes × bf16 scales are exact fp16 values (docs/BENCHMARKS.md,
Kernels v5), so cuBLAS's fp16 GEMM with float32 output computes the reference's dequantized product up to
summation order. Pieces, each timed by CUDA-graph replay, side by side with bf16 `torch.matmul` and the
shipped paths:
  quantize (f16 layout: q·s·2^-E, row factors 2^E, low-rank partials) -> weight workspace (fp16) ->
  torch.mm(.., out_dtype=float32) -> epilogue in torch (· 2^E, + low-rank up-projection, + bias, -> bf16).
The epilogue is not fused (one float32 M x N round trip), so this is an upper bound on that design's time.

    python3 bench/f16_cublas.py --ms 512,1024,2048,8192 --json out.json
"""
import argparse
import json
import os
import sys

import torch
import triton
import triton.testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import _layer               # noqa: E402
from kernels_under_test import gemm_module        # noqa: E402


def graph_ms(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="3584x10752,3584x3584,3584x14336,14336x3584")
    ap.add_argument("--ms", default="512,1024,2048,8192")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    mod = gemm_module()
    rows = []
    for shape in a.shapes.split(","):
        K, N = map(int, shape.split("x"))
        layer = _layer(K, N, True, seed=K + N)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K ** -0.5
        G = K // 64
        for M in map(int, a.ms.split(",")):
            x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
            ref = layer.reference_forward(x).float()
            w16 = torch.empty(N, K, dtype=torch.float16, device="cuda")

            def dequant():
                mod._dequant_weight_f16[(triton.cdiv(N, 64), G)](layer.qweight, layer.wscales, w16, N, K,
                                                                 BLOCK_N=64, GROUP=64)
            q16, rs, lr = mod.quantize_activations(x, layer, f16=True)
            dequant()

            def epilogue(acc):
                return (acc * rs[:, None] + lr.sum(0) @ layer.lora_up.float().t() + layer.bias.float()).to(x.dtype)

            def cublas_path():
                q, s, l = mod.quantize_activations(x, layer, f16=True)
                dequant()
                acc = torch.mm(q, w16.t(), out_dtype=torch.float32)
                return (acc * s[:, None] + l.sum(0) @ layer.lora_up.float().t() + layer.bias.float()).to(x.dtype)
            y = cublas_path()
            r = {"K": K, "N": N, "M": M,
                 "rel_err": ((y.float() - ref).norm() / ref.norm()).item(),
                 "bf16_ms": graph_ms(lambda: torch.matmul(x, w.t())),
                 "cublas_path_ms": graph_ms(cublas_path),
                 "quantize_f16_ms": graph_ms(lambda: mod.quantize_activations(x, layer, f16=True)),
                 "dequant_w_ms": graph_ms(dequant),
                 "mm_f16_f32out_ms": graph_ms(lambda: torch.mm(q16, w16.t(), out_dtype=torch.float32)),
                 "epilogue_ms": graph_ms(lambda: epilogue(torch.mm(q16, w16.t(), out_dtype=torch.float32))),
                 "default_path": mod.path_for(x), "default_ms": graph_ms(lambda: mod.w4a4_linear(x, layer))}
            for p in ("fp8", "fp8w", "f16w"):
                r[p + "_ms"] = graph_ms(lambda p=p: mod.w4a4_linear(x, layer, path=p))
            r["epilogue_ms"] -= r["mm_f16_f32out_ms"]
            best = min(r[p + "_ms"] for p in ("fp8", "fp8w", "f16w"))
            r["cublas_vs_best_triton"] = best / r["cublas_path_ms"]
            r["cublas_vs_bf16"] = r["bf16_ms"] / r["cublas_path_ms"]
            rows.append(r)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    if a.json:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
                  open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
