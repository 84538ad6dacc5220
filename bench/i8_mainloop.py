"""Does an asynchronous INT8 wgmma K loop run faster on Hopper? The i8w GEMM's main loop alone (y = bf16(a · wᵀ),
int8 operands, no epilogue) in Gluon with one wgmma group left in flight (`kernels/i8_mainloop_gluon.py`) against
the same loop in Triton, whose pipeliner waits for every int32-accumulating wgmma (`pendings = 0`), against
cuBLASLt's INT8 GEMM (torch._int_mm) and bf16 cuBLAS, on the 8B block shapes at the product's slice sizes; then the
whole i8w GEMM in Gluon (`i8w_gemm`, with the epilogue) against the product's Triton i8w forward and its parts.
CUDA-graph replay medians, µs and TOPS; the Gluon loop's output checked against the exact sums.

    python3 bench/i8_mainloop.py [--ms 2048,4096,8192] [--json out.json]
"""
import argparse
import os
import sys

import torch
import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.edge_proof import write_json           # noqa: E402
from bench.w4a4_stages import BLOCK_SHAPES, _ms    # noqa: E402
from var_gen_ros.quant.dispatch import kernel_module   # noqa: E402


@triton.jit
def _triton_i8_mainloop(a_ptr, w_ptr, y_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """The same loop as `_w4a4_i8_kernel`'s TMA workspace tiles, without their epilogue."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BN, BK])
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k in range(0, K, BK):
        acc = tl.dot(a_desc.load([pid_m * BM, k]), tl.trans(w_desc.load([pid_n * BN, k])), acc, out_dtype=tl.int32)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(tl.float32).to(tl.bfloat16),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="2048,4096,8192")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    gl_mod = kernel_module("i8_mainloop_gluon")
    kernel_module("w4a4_gemm_triton")._ensure_allocator()      # the Triton loop's device-side descriptors
    tiles = [(128, 256, 4), (128, 128, 4)]
    rows = []
    for K, N, _ in BLOCK_SHAPES:
        w = torch.randint(-112, 113, (N, K), dtype=torch.int8, device="cuda")
        wb = torch.randn(N, K, dtype=torch.bfloat16, device="cuda")
        for M in (int(m) for m in a.ms.split(",")):
            x = torch.randint(-112, 113, (M, K), dtype=torch.int8, device="cuda")
            xb = torch.randn(M, K, dtype=torch.bfloat16, device="cuda")
            y = torch.empty(M, N, dtype=torch.bfloat16, device="cuda")
            acc = torch.empty(M, N, dtype=torch.int32, device="cuda")
            t = {"bf16 cuBLAS": _ms(lambda: torch.matmul(xb, wb.t(), out=y)),
                 "int8 cuBLASLt": _ms(lambda: torch._int_mm(x, w.t(), out=acc))}
            exact = {}
            for bm, bn, st in tiles:
                gl_mod.i8_mainloop(x, w, y, bm, bn, 128, st)
                exact[f"{bm}x{bn}"] = bool(torch.equal(y, gl_mod.reference(x, w))) if M <= 4096 else None
                t[f"gluon {bm}x{bn} s{st}"] = _ms(lambda: gl_mod.i8_mainloop(x, w, y, bm, bn, 128, st))
                grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
                t[f"triton {bm}x{bn} s{st}"] = _ms(lambda: _triton_i8_mainloop[grid](x, w, y, M, N, K, BM=bm, BN=bn, BK=128,
                                                                                    num_warps=8, num_stages=st))
            us = {k: 1e3 * v for k, v in t.items()}
            tops = {k: 2 * M * N * K / (v * 1e-6) / 1e12 for k, v in us.items()}
            rows.append(dict(K=K, N=N, M=M, us=us, tops=tops, gluon_exact=exact))
            print(f"{K:>5} -> {N:<5} M {M:>5}: " + ", ".join(f"{k} {us[k]:.1f} us ({tops[k]:.0f})" for k in us)
                  + f"; gluon exact {exact}", flush=True)
    # the whole i8w GEMM in Gluon (the epilogue included) against the product's Triton i8w forward, on W4A4 layers
    sys.path.insert(0, os.path.join(ROOT, "test"))
    from test_kernels_gpu import _layer
    gm = kernel_module("w4a4_gemm_triton")
    gm.GLUON_I8W = False           # "triton i8w forward": the Triton GEMM (the product's on sm_90 is the Gluon one)
    full = []
    for K, N, bias in BLOCK_SHAPES:
        layer = _layer(K, N, bias, 0)
        wu = layer.weight_units()
        wq = gm._i8_workspace(layer, wu)
        for M in (int(m) for m in a.ms.split(",")):
            x = torch.randn(M, K, dtype=torch.bfloat16, device="cuda")
            y = torch.empty(M, N, dtype=torch.bfloat16, device="cuda")
            q, ux, lr = gm.quantize_activations(x, layer, i8=True)
            t = {"triton i8w forward": _ms(lambda: gm.w4a4_linear(x, layer, out=y, path="i8w")),
                 "kernel 1": _ms(lambda: gm.quantize_activations(x, layer, i8=True)),
                 "workspace unpack": _ms(lambda: gm._i8_workspace(layer, wu))}
            for bm, bn in ((128, 256), (128, 128)):
                t[f"gluon i8w gemm {bm}x{bn}"] = _ms(lambda: gl_mod.i8w_gemm(q, wq, ux, wu, lr[0], layer.lora_up,
                                                                             layer.bias, 0, y, bm, bn))
            us = {k: 1e3 * v for k, v in t.items()}
            us["triton i8w gemm (forward - kernel 1 - unpack)"] = us["triton i8w forward"] - us["kernel 1"] - us["workspace unpack"]
            full.append(dict(K=K, N=N, M=M, us=us))
            print(f"{K:>5} -> {N:<5} M {M:>5}: " + ", ".join(f"{k} {v:.1f} us" for k, v in us.items()), flush=True)
    write_json(a.json, dict(device=torch.cuda.get_device_name(), rows=rows, full=full))
    return 0


if __name__ == "__main__":
    sys.exit(main())
