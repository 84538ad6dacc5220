"""FC2_STATS per FFN (kernels/w4a4_gemm_triton.py `w4a4_ffn`): fc2's row pass made in fc1's Gluon GEMM epilogue, timed
against the two layers as they run without it, at the rows of a 1024² generation's scales that take a Gluon GEMM
unswapped (288: i8p; 800-8192: the i8w GEMM; 4096 is a 2048-token slice). CUDA-graph replay medians, µs:
- fc1 alone and with the next layer's row pass in its epilogue (what the epilogue costs);
- fc2's kernel 1 with its own row pass and given fc1's (what the row pass cost);
- the whole FFN both ways, and bf16 cuBLAS's two matmuls for scale;
with the FFN's relative difference between the two ways (the low-rank input's rounding; the codes are the same).

    python3 bench/fc2_stats.py [--ms 288,800,2048,4096,8192] [--json out.json]
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from bench.edge_proof import write_json           # noqa: E402
from bench.w4a4_stages import _ms                 # noqa: E402
from var_gen_ros.quant.dispatch import kernel_module   # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="288,800,2048,4096,8192")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    from test_kernels_gpu import _layer
    gm = kernel_module("w4a4_gemm_triton")
    if gm._gluon() is None:
        print("this Triton has no Gluon: nothing to time")
        return 1
    C = 3584
    fc1, fc2 = _layer(C, 4 * C, True, 81), _layer(4 * C, C, True, 82)
    w1 = torch.randn(4 * C, C, dtype=torch.bfloat16, device="cuda")
    w2 = torch.randn(C, 4 * C, dtype=torch.bfloat16, device="cuda")
    rows = []
    for M in (int(m) for m in a.ms.split(",")):
        x = (torch.randn(M, C, device="cuda") * 2).bfloat16()
        h1 = torch.empty(M, 4 * C, dtype=torch.bfloat16, device="cuda")
        gm.FC2_STATS = True
        stats = {}
        h = gm.w4a4_linear(x, fc1, act="gelu_tanh", next_layer=fc2, stats=stats)
        if not stats:
            print(f"M {M}: fc1 takes no Gluon GEMM unswapped here (path {gm.path_for(x, fc1)}): skipped", flush=True)
            continue
        t = {"bf16 cuBLAS FFN": _ms(lambda: torch.matmul(torch.matmul(x, w1.t(), out=h1), w2.t())),
             "fc1": _ms(lambda: gm.w4a4_linear(x, fc1, act="gelu_tanh")),
             "fc1 with fc2's row pass": _ms(lambda: gm.w4a4_linear(x, fc1, act="gelu_tanh", next_layer=fc2,
                                                                  stats={})),
             "fc2 kernel 1": _ms(lambda: gm.quantize_activations(h, fc2, i8=True)),
             "fc2 kernel 1 given": _ms(lambda: gm.quantize_activations(h, fc2, i8=True, given=stats)),
             "FFN": _ms(lambda: gm.w4a4_linear(gm.w4a4_linear(x, fc1, act="gelu_tanh"), fc2)),
             "FFN with FC2_STATS": _ms(lambda: gm.w4a4_ffn(x, fc1, fc2))}
        plain = gm.w4a4_linear(h, fc2).float()
        fused = gm.w4a4_ffn(x, fc1, fc2).float()
        rel = float(((fused - plain).norm() / plain.norm()).item())
        us = {k: 1e3 * v for k, v in t.items()}
        rows.append(dict(M=M, us=us, ffn_rel_diff=rel))
        print(f"M {M:>5}: " + ", ".join(f"{k} {v:.1f}" for k, v in us.items())
              + f" | FFN {us['FFN with FC2_STATS'] / us['FFN']:.3f}x, rel diff {rel:.1e}", flush=True)
    write_json(a.json, dict(device=torch.cuda.get_device_name(), rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
