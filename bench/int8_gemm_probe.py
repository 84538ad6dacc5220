"""How fast can the W4A4 i8 product's INT8 GEMM be on this GPU? Graph-replayed ms and TOPS of
cuBLASLt's INT8 GEMM (torch._int_mm, int32 out) on the i8 path's operands (q·m int8 activations,
the weights' int8 workspace), against the Triton i8w forward (default tuning and fixed tiles), its
stages, and bf16 cuBLAS, at the product's slice sizes.

    python3 bench/int8_gemm_probe.py [--ms 2048,8192] [--json out.json] [--tiles "persist,k128 tma s4" | --tiles none]
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
from bench.w4a4_stages import BLOCK_SHAPES, _ms  # noqa: E402
TILES = {"128x256 k128 tma s3": dict(BLOCK_M=128, BLOCK_N=256, SWAP=False, KSTEP=128, TMA=True, num_warps=8, num_stages=3),
         "128x256 k128 tma s4": dict(BLOCK_M=128, BLOCK_N=256, SWAP=False, KSTEP=128, TMA=True, num_warps=8, num_stages=4),
         "256x128 k128 tma s3": dict(BLOCK_M=256, BLOCK_N=128, SWAP=False, KSTEP=128, TMA=True, num_warps=8, num_stages=3),
         "128x128 k128 tma s4": dict(BLOCK_M=128, BLOCK_N=128, SWAP=False, KSTEP=128, TMA=True, num_warps=8, num_stages=4),
         "128x128 k128 tma s5 w4": dict(BLOCK_M=128, BLOCK_N=128, SWAP=False, KSTEP=128, TMA=True, num_warps=4, num_stages=5),
         # the persistent form (`_i8w_persistent`, VAR_GEN_W4A4_PERSIST; forty-eighth session)
         **{f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']} k128 tma s{c.num_stages} persist":
            dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in gemm_module().I8_PERSIST_CONFIGS}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="2048,8192")
    ap.add_argument("--json", default=None)
    ap.add_argument("--tiles", default="", help="only the fixed tiles whose names contain one of these (comma-separated; "
                                                 "'none': the default tuning only)")
    a = ap.parse_args()
    tiles = {k: v for k, v in TILES.items() if not a.tiles or any(t in k for t in a.tiles.split(","))}
    mod = gemm_module()
    mod.GLUON_I8W = False        # the Triton i8w GEMM's picks (on sm_90 the product's i8w calls from 513 rows are Gluon's)
    # the dispatcher's load seeds the tuners with the GPU model's shipped picks (kernels/tuned/), as in the product:
    # the default tuning's column is then the product's pick, with no trials
    from var_gen_ros.quant.dispatch import kernel_status, w4a4_kernel
    w4a4_kernel(torch.empty(1, 64, device="cuda"))
    print(kernel_status(), flush=True)
    rows = []
    for K, N, bias in BLOCK_SHAPES:
        layer = _layer(K, N, bias, 0)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        wu = layer.weight_units()
        wq = torch.empty(N, K, dtype=torch.int8, device="cuda")
        mod._UNPACK_I8((-(-N // 64), K // 64), (layer.qweight, layer.wscales, wu, wq, N, K), dict(BLOCK_N=64, GROUP=64))
        for M in (int(m) for m in a.ms.split(",")):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            y = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            q, ux, lr = mod.quantize_activations(x, layer, i8=True)
            mod.w4a4_linear(x, layer, out=y, path="i8w")
            flop = 2 * M * N * K
            r = {"K": K, "N": N, "M": M}
            r["bf16_ms"] = _ms(lambda: torch.matmul(x, w.t(), out=y))
            r["i8w_ms"] = _ms(lambda: mod.w4a4_linear(x, layer, out=y, path="i8w"))
            r["quantize_ms"] = _ms(lambda: mod.quantize_activations(x, layer, i8=True))
            acc = torch.empty(M, N, dtype=torch.int32, device="cuda")
            r["int_mm_ms"] = _ms(lambda: torch._int_mm(q, wq.t(), out=acc))
            ok = torch.equal(torch._int_mm(q, wq.t()), (q.double() @ wq.double().t()).to(torch.int32)) if M <= 2048 else None
            r["int_mm_exact"] = ok
            for name, cfg in tiles.items():
                try:
                    mod.w4a4_linear(x, layer, out=y, path="i8w", config=cfg)
                    r[f"tile {name}"] = _ms(lambda: mod.w4a4_linear(x, layer, out=y, path="i8w", config=cfg))
                except Exception as e:       # a tile that does not fit (shared memory) on this GPU
                    r[f"tile {name}"] = f"{type(e).__name__}"
            rows.append(r)
            tops = lambda ms: flop / ms / 1e9
            print(f"{K:6d}->{N:<6d} M={M:5d} | bf16 {r['bf16_ms']:.4f} ({tops(r['bf16_ms']):.0f} TF) | i8w fwd "
                  f"{r['i8w_ms']:.4f} (quantize {r['quantize_ms']:.4f}) | cuBLASLt int8 {r['int_mm_ms']:.4f} "
                  f"({tops(r['int_mm_ms']):.0f} TOPS, exact {ok}) | " +
                  " ".join(f"{k[5:]}: {v if isinstance(v, str) else round(v, 4)}" for k, v in r.items() if k.startswith("tile ")),
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
