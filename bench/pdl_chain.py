"""PDL_CHAIN (kernels/w4a4_gemm_triton.py, VAR_GEN_W4A4_PDL_CHAIN) side by side with the product's launches: a block's
four W4A4 layer shapes (3584 -> 10752, 3584², fc1 3584 -> 14336 with GELU, fc2 14336 -> 3584) run one after another,
as a generation's block runs them, captured in one CUDA graph, at the rows of a 1024² generation's scales (CFG). Their
int4 weights are 77 MB together, more than an H100's 50 MB L2, so each layer's weights come from DRAM as in a
generation's 40 blocks. The chain off and on alternate (off, on, off, on), each the median of do_bench_cudagraph; bf16
cuBLAS on the same shapes for the ratio. Every output is checked bit for bit against the chain off.

    python3 bench/pdl_chain.py [--ms 32,72,128,288,512,800,1152,2048] [--json out.json]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="32,72,128,288,512,800,1152,2048")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    from test_kernels_gpu import _layer
    gm = kernel_module("w4a4_gemm_triton")
    layers = [(_layer(K, N, bias, K + N), "gelu_tanh" if N == 4 * K else None) for K, N, bias in BLOCK_SHAPES]
    dense = [torch.randn(N, K, dtype=torch.bfloat16, device="cuda") for K, N, _ in BLOCK_SHAPES]
    rows = []
    for M in (int(m) for m in a.ms.split(",")):
        xs = {K: torch.randn(M, K, dtype=torch.bfloat16, device="cuda") for K in {k for k, _, _ in BLOCK_SHAPES}}
        ys = [torch.empty(M, N, dtype=torch.bfloat16, device="cuda") for _, N, _ in BLOCK_SHAPES]

        def block():
            for (layer, act), y in zip(layers, ys):
                gm.w4a4_linear(xs[layer.in_features], layer, out=y, act=act)

        def block_bf16():
            for w, y in zip(dense, ys):
                torch.matmul(xs[w.shape[1]], w.t(), out=y)

        gm.PDL_CHAIN = False
        block()
        base = [y.clone() for y in ys]
        paths = [gm.path_for(xs[layer.in_features], layer) for layer, _ in layers]
        gm.PDL_CHAIN = True
        block()
        same = all(torch.equal(y, b) for y, b in zip(ys, base))
        t = {"off": [], "on": []}
        for mode in ("off", "on", "off", "on"):
            gm.PDL_CHAIN = mode == "on"
            t[mode].append(1e3 * _ms(block))
        bf16 = 1e3 * _ms(block_bf16)
        off, on = min(t["off"]), min(t["on"])
        row = dict(M=M, paths=paths, us_off=t["off"], us_on=t["on"], us_bf16=bf16, same_bits=same,
                   on_over_off=on / off, off_over_bf16=off / bf16, on_over_bf16=on / bf16)
        rows.append(row)
        print(f"M {M:>5} ({'/'.join(paths)}): block of 4 layers, chain off {t['off'][0]:.1f} / {t['off'][1]:.1f} µs, "
              f"on {t['on'][0]:.1f} / {t['on'][1]:.1f} µs ({on / off:.3f}x), bf16 {bf16:.1f} µs "
              f"(W4A4 / bf16: off {off / bf16:.3f}, on {on / bf16:.3f}); same bits {same}", flush=True)
    gm.PDL_CHAIN = False
    write_json(a.json, dict(device=torch.cuda.get_device_name(), rows=rows))
    return 0 if all(r["same_bits"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
