"""The block's residual adds in the i8 GEMMs' epilogue (`w4a4_linear(..., residual=x, gate=g)`, the default) against
the same W4A4 GEMM followed by PyTorch's addcmul (VAR_GEN_W4A4_RESIDUAL_EPILOGUE=0's path, what the product ran before)
and against bf16 cuBLAS followed by the addcmul (the bf16 model's), side by side in one process: the two layer shapes
whose outputs go into the residual stream (3584 -> 3584: the attention's and the cross-attention's projections;
14336 -> 3584: fc2), added into a CFG batch's slice of a float32 stream (2 x tokens x 3584, strided), with a gate.
CUDA-graph replay medians, each variant's first call (compile, tuning) outside the timing.

    python3 bench/residual_epilogue.py --ms 128,512,2048,4096 --json out.json
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
from kernels_under_test import gemm_module      # noqa: E402
from test_kernels_gpu import _layer             # noqa: E402

SHAPES = [(3584, 3584), (14336, 3584)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="128,512,2048,4096", help="rows (2 x tokens; the shipped picks hold these)")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    from var_gen_ros.quant.dispatch import kernel_status
    print(kernel_status(), flush=True)       # loads the kernels as the product does, the shipped picks seeded
    mod = gemm_module()
    rows = []
    for K, N in SHAPES:
        layer = _layer(K, N, True, seed=K + N)
        w = (torch.randn(N, K, device="cuda") * K ** -0.5).bfloat16()            # the bf16 layer (timing only)
        b = layer.bias
        for M in (int(m) for m in a.ms.split(",")):
            n = M // 2
            x = (torch.randn(2, n, K, device="cuda") * 2).bfloat16()
            stream = torch.randn(2, n + 64, N, device="cuda")
            res = stream[:, 32:32 + n]
            gate = (torch.randn(2, 1, 6, N, device="cuda") * 0.1).unbind(2)[0]

            def fused():
                mod.w4a4_linear(x, layer, residual=res, gate=gate)

            def apart():
                res.addcmul_(mod.w4a4_linear(x, layer), gate)

            def bf16():
                res.addcmul_(torch.nn.functional.linear(x, w, b), gate)
            # the plain call first: the residual call then takes its pick (`_seed_residual_pick`), the same launch
            variants = {"w4a4_then_addcmul": apart, "epilogue": fused, "bf16_then_addcmul": bf16}
            for fn in variants.values():
                fn()
            r = {"K": K, "N": N, "M": M, "path": mod.path_for(x.view(-1, K), layer), "ms": {}}
            for _ in range(2):       # interleaved twice; the second kept
                for name, fn in variants.items():
                    r["ms"][name] = _ms(fn)
            rows.append(r)
            t = r["ms"]
            print(f"{K:6d}->{N:<5d} M={M:5d} {r['path']:>4} | us: epilogue {t['epilogue'] * 1e3:7.1f}  "
                  f"w4a4+addcmul {t['w4a4_then_addcmul'] * 1e3:7.1f} "
                  f"({t['w4a4_then_addcmul'] / t['epilogue']:.2f}x the epilogue's time)  "
                  f"bf16+addcmul {t['bf16_then_addcmul'] * 1e3:7.1f} (epilogue {t['bf16_then_addcmul'] / t['epilogue']:.2f}x "
                  f"faster)", flush=True)
    write_json(a.json, {"device": torch.cuda.get_device_name(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
