"""When an i8p GPU test fails: small cases of `i8p_gemm` (kernels/i8_mainloop_gluon.py) without the low-rank term and
bias, whose output must equal bf16(float32(exact int32 sums) · u_x · u_w) bit for bit, each saved with its inputs to
one .pt file, so that the pattern of wrong outputs (whole tiles, rows, columns, K steps, split shares) can be studied
on a machine without a GPU. Prints, per case, how many outputs differ and which rows / columns / 64-wide column blocks.

    python3 bench/i8p_debug.py --out DIR
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from var_gen_ros.quant.dispatch import kernel_module   # noqa: E402

CASES = [  # (M, N, K, tile)
    (72, 256, 512, dict(swap=True, block_m=128, block_n=64, num_warps=4, instr_n=128, split_k=1)),
    (32, 128, 256, dict(swap=True, block_m=32, block_n=64, num_warps=4, instr_n=32, split_k=1)),
    (72, 256, 1024, dict(swap=True, block_m=128, block_n=64, num_warps=4, instr_n=128, split_k=2)),
    (256, 256, 512, dict(swap=False, block_m=128, block_n=128, num_warps=8, instr_n=128, split_k=1)),
    (256, 256, 2048, dict(swap=False, block_m=128, block_n=128, num_warps=8, instr_n=128, split_k=2)),
]


def _where(bad: torch.Tensor, dim: int, n: int = 12) -> list:
    idx = bad.any(dim=dim).nonzero().flatten().tolist()
    return idx[:n] + (["..."] if len(idx) > n else [])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    from test_kernels_gpu import _i8_weights, _layer
    gm = kernel_module("w4a4_gemm_triton")
    glu = gm._gluon()
    torch.manual_seed(0)
    failed = 0
    for c, (M, N, K, tile) in enumerate(CASES):
        layer = _layer(K, N, False, seed=c)
        wu = layer.weight_units()
        x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
        q, ux, _ = gm.quantize_activations(x, layer, i8=True)
        ref = ((q.double() @ _i8_weights(layer).double().t()).float() * (ux[:, None] * wu[None, :])).bfloat16()
        y = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device="cuda")
        err = None
        try:
            glu.i8p_gemm(q, layer.qweight, layer.wscales, wu, ux, None, layer.lora_up, None, 0, y, tile=tile)
            torch.cuda.synchronize()
        except Exception as e:        # a launch or compile error: report it, keep the inputs
            err = f"{type(e).__name__}: {e}"
        bad = (y != ref) | torch.isnan(y.float())
        n_bad = int(bad.sum())
        failed += bool(n_bad or err)
        print(f"case {c}: M {M} N {N} K {K} {tile}: {n_bad} of {M * N} outputs differ"
              + (f" (error {err[:300]})" if err else "")
              + (f"; rows {_where(bad, 1)}; columns {_where(bad, 0)}; 64-column blocks "
                 f"{sorted(set(i // 64 for i in bad.any(0).nonzero().flatten().tolist()))[:16]}; "
                 f"nan {int(torch.isnan(y.float()).sum())}" if n_bad else ""), flush=True)
        torch.save(dict(M=M, N=N, K=K, tile=tile, q=q.cpu(), qweight=layer.qweight.cpu(), wscales=layer.wscales.cpu(),
                        wu=wu.cpu(), ux=ux.cpu(), y=y.cpu(), ref=ref.cpu(), error=err),
                   os.path.join(a.out, f"i8p_debug_case{c}.pt"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
