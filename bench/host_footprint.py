"""Where a generating process's host memory comes from: anonymous and file-backed RSS after each of the
GPU stacks the pipeline touches, in the order a first start touches them (a Jetson's CPU and GPU share
one DRAM, so on the Orin these bytes are taken from the model's budget).

    python3 bench/host_footprint.py --json docs/results/host_footprint_h100.json     (needs a GPU)

Stages: torch imported; the CUDA context; a bf16 matmul (cuBLAS); SDPA at the 8B last scale's shape with
each backend (cuDNN, flash, memory-efficient); one W4A4 linear per 8B shape through the kernels (Triton
compiles the quantizer and the GEMM); the INT8-KV attention kernel; a CUDA graph of 40 W4A4 linears.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from var_gen_ros.memory import process_memory, trim_host_memory  # noqa: E402

GIB = 2 ** 30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    rows = [("python + this package", process_memory())]
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    rows.append(("torch imported", process_memory()))

    def stage(name):
        torch.cuda.synchronize()
        trim_host_memory()
        rows.append((name, process_memory()))
        r = rows[-1][1]
        print(f"{name:<44} rss {r['rss'] / GIB:6.3f}  anon {r['rss_anon'] / GIB:6.3f}  file {r['rss_file'] / GIB:6.3f} GiB",
              flush=True)

    torch.empty(1, device="cuda")
    stage("CUDA context")
    x = torch.randn(4096, 3584, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3584, 3584, device="cuda", dtype=torch.bfloat16)
    (x @ w).sum().item()
    stage("bf16 matmul (cuBLAS)")
    q = torch.randn(2, 28, 4096, 128, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(2, 28, 14617, 128, device="cuda", dtype=torch.bfloat16)
    for name, backend in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                          ("memory-efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, kv, kv).sum().item()
            stage(f"SDPA, {name}")
        except RuntimeError as e:
            print(f"SDPA, {name}: not available ({str(e)[:80]})")
    del q, kv
    from var_gen_ros.quant import W4A4Linear
    layers = []
    for K, N in ((3584, 10752), (3584, 3584), (3584, 14336), (14336, 3584)):
        lin = torch.nn.Linear(K, N, device="cuda")
        layers.append(W4A4Linear.from_linear(lin, torch.rand(K, device="cuda") + 0.5, None, rank=32, group=64,
                                             param_dtype=torch.bfloat16))
        for M in (32, 2048):
            layers[-1](torch.randn(M, K, device="cuda", dtype=torch.bfloat16))
    stage("W4A4 linears, 4 shapes x 2 row counts (Triton)")
    from var_gen_ros.quant.kv_int8 import Int8KVCache  # noqa: F401  (the cache the attention reads)
    from var_gen_ros.quant.dispatch import int8_attention_kernel
    qa = torch.randn(2, 28, 1024, 128, device="cuda", dtype=torch.bfloat16)
    kq = torch.randint(-128, 127, (2, 28, 2521, 128), device="cuda", dtype=torch.int8)
    s = torch.rand(28, 128, device="cuda") * 0.01 + 0.001
    int8_attention_kernel(qa)(qa, kq, kq, 2521, s, s * 0, s, s * 0)
    stage("INT8-KV attention (Triton)")
    lin = layers[1]
    xs = torch.randn(512, 3584, device="cuda", dtype=torch.bfloat16)
    lin(xs)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = xs
        for _ in range(40):
            y = lin(y)
    g.replay()
    stage("a CUDA graph of 40 W4A4 linears")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "stages": [{"stage": n, **m} for n, m in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
