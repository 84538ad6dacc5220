"""Where the W4A4 GEMM's time goes on Hopper: the shipped INT8-MMA kernel against variants of its
main loop, side by side in one run (GEMM kernel alone, activation quantization timed separately).

- int8:     the shipped kernel (`kernels/w4a4_gemm_triton.py`): INT8 MMA per 64-group, then
            acc += float(d) * (sx ⊗ sw)  (an int->float convert per accumulator element and group)
- int8_magic: the same, the convert done as (d + 1.5·2^23 as float bits) - 1.5·2^23 (exact for |d| < 2^22;
            a group's dot is at most 64·8·8 = 4096) — integer add + float add instead of I2F
- ceiling:  INT8 MMA over all of K into one int32 accumulator and a single rescale (wrong arithmetic:
            what the tensor cores alone can do, the bound the per-group rescale is measured against)
Every variant but `ceiling` is checked against the reference forward (relative error <= 1e-3).

    python3 bench/gemm_variants.py --json out.json
"""
import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import _layer                                       # noqa: E402
from var_gen_ros.quant.dispatch import kernel_module                         # noqa: E402

gemm_mod = kernel_module("w4a4_gemm_triton")
GROUP, quantize_activations, w4a4_linear = gemm_mod.GROUP, gemm_mod.quantize_activations, gemm_mod.w4a4_linear


@triton.jit
def _gemm_variant(q_ptr, sx_ptr, w_ptr, sw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, M, N, K, S,
                  HAS_BIAS: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  VARIANT: tl.constexpr, GROUP: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = rm < M
    nmask = rn < N
    HALF: tl.constexpr = GROUP // 2
    j = tl.arange(0, HALF)
    r = tl.arange(0, R)
    G = K // GROUP
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    iacc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for g in range(0, G):
        k0 = g * GROUP
        packed = tl.load(w_ptr + rn[:, None] * (K // 2) + (k0 // 2 + j)[None, :], mask=nmask[:, None], other=0)
        p8 = packed.to(tl.int8, bitcast=True)
        lo = (p8 << 4) >> 4
        hi = p8 >> 4
        a_even = tl.load(q_ptr + rm[:, None] * K + (k0 + j)[None, :], mask=mmask[:, None], other=0)
        a_odd = tl.load(q_ptr + rm[:, None] * K + (k0 + HALF + j)[None, :], mask=mmask[:, None], other=0)
        if VARIANT == 3:      # ceiling
            iacc += tl.dot(a_even, tl.trans(lo), out_dtype=tl.int32) + tl.dot(a_odd, tl.trans(hi), out_dtype=tl.int32)
        else:
            sx = tl.load(sx_ptr + rm * G + g, mask=mmask, other=0.0)
            sw = tl.load(sw_ptr + rn * G + g, mask=nmask, other=0.0).to(tl.float32)
            d = tl.dot(a_even, tl.trans(lo), out_dtype=tl.int32) + tl.dot(a_odd, tl.trans(hi), out_dtype=tl.int32)
            if VARIANT == 1:
                df = (d + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0
            else:
                df = d.to(tl.float32)
            acc += df * sx[:, None] * sw[None, :]
    if VARIANT == 3:
        sx = tl.load(sx_ptr + rm * G, mask=mmask, other=0.0)
        sw = tl.load(sw_ptr + rn * G, mask=nmask, other=0.0).to(tl.float32)
        acc = iacc.to(tl.float32) * sx[:, None] * sw[None, :]
    up = tl.load(up_ptr + rn[:, None] * R + r[None, :], mask=nmask[:, None], other=0.0).to(tl.float32)
    lr = tl.zeros((BLOCK_M, R), dtype=tl.float32)
    for s in range(0, S):
        lr += tl.load(lr_ptr + s * M * R + rm[:, None] * R + r[None, :], mask=mmask[:, None], other=0.0)
    acc += tl.dot(lr, tl.trans(up), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


VARIANTS = {"int8": 0, "int8_magic": 1, "ceiling": 3}
TILES = [(128, 128, 8, 3), (128, 256, 8, 3), (64, 128, 4, 4), (128, 128, 4, 4), (64, 256, 8, 3)]


def run_variant(name, q, sx, lr, layer, y, tile):
    M, K = q.shape
    N = layer.out_features
    bm, bn, warps, stages = tile
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    _gemm_variant[grid](q, sx, layer.qweight, layer.wscales, lr, layer.lora_up,
                        layer.bias if layer.bias is not None else y, y, M, N, K, lr.shape[0],
                        HAS_BIAS=layer.bias is not None, R=layer.rank, BLOCK_M=bm, BLOCK_N=bn,
                        VARIANT=VARIANTS[name], GROUP=GROUP, num_warps=warps, num_stages=stages)
    return y


def bench_quantize(rows, shapes, ms):
    """Kernel 1 (activation quantization + low-rank down-projection) at large M: the float32 FMA
    low-rank dot (ieee, the first design) vs the bf16x2 tensor-core dot at several row blocks and
    warp counts, for the INT8 (de-interleaved) and FP8 (natural order) code layouts."""
    import triton.testing as tt
    t = lambda fn: tt.do_bench_cudagraph(fn, rep=100, return_mode="median")
    launches = [("ieee", None, 4)] + [("bf16x2", bm, w) for bm, w in ((16, 4), (16, 8), (32, 4), (64, 4), (64, 8), (128, 8))]
    for K, N in shapes:
        layer = _layer(K, N, True, 0)
        for M in ms:
            x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
            from var_gen_ros.quant.w4a4 import smooth_input
            xs = smooth_input(x, layer.smooth)
            lr_ref = xs.double() @ layer.lora_down.double()
            row = {"K": K, "M": M, "x_bytes": x.numel() * 2}
            for fp8 in (False, True):
                q0, s0, _ = quantize_activations(x, layer, fp8=fp8)
                for prec, bm, w in launches:
                    key = f"{'fp8' if fp8 else 'int8'}_{prec}_bm{bm or 'dflt'}_w{w}"
                    kw = dict(lr_prec=prec, block_m=bm, fp8=fp8, num_warps=w)
                    try:
                        q, sx, lr = quantize_activations(x, layer, **kw)
                        same = bool(torch.equal(q.view(torch.int8), q0.view(torch.int8)) and torch.equal(sx, s0))
                        err = ((lr.sum(0).double() - lr_ref).norm() / lr_ref.norm()).item()
                        ms_ = t(lambda: quantize_activations(x, layer, **kw))
                    except Exception as e:
                        print(key, "failed:", str(e).split("\n")[0][:120])
                        continue
                    row[key] = {"ms": ms_, "codes_equal": same, "lr_err": err, "GBps": 3 * x.numel() / ms_ / 1e6}
            best = min((v["ms"], k) for k, v in row.items() if isinstance(v, dict))
            row["best"] = best[1]
            rows.append(row)
            print(json.dumps(row), flush=True)


def main():
    import triton.testing as tt
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--shapes", default="3584x10752,14336x3584,3584x14336")
    ap.add_argument("--ms", default="512,2048,8192")
    ap.add_argument("--quantize-only", action="store_true")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="main-loop variants to time ('' for none)")
    a = ap.parse_args()
    if a.quantize_only:
        rows = []
        bench_quantize(rows, [tuple(map(int, s.split("x"))) for s in a.shapes.split(",")], list(map(int, a.ms.split(","))))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(), "quantize": rows}, f, indent=1)
        return
    t = lambda fn: tt.do_bench_cudagraph(fn, rep=100, return_mode="median")
    rows = []
    for shp in a.shapes.split(","):
        K, N = map(int, shp.split("x"))
        layer = _layer(K, N, True, 0)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        for M in map(int, a.ms.split(",")):
            x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
            ref = layer.reference_forward(x).float()
            q, sx, lr = quantize_activations(x, layer)
            y = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            row = {"K": K, "N": N, "M": M, "bf16_ms": t(lambda: torch.matmul(x, w.t(), out=y)),
                   "quantize_ms": t(lambda: quantize_activations(x, layer)),
                   "shipped_total_ms": t(lambda: w4a4_linear(x, layer, out=y, path="int8"))}
            # the FP8-MMA paths (e4m3 codes, float32 group dots; fp8w: weights unpacked to an e4m3
            # workspace first): error, total, chosen tile
            for p in ("fp8", "fp8w"):
                y.fill_(float("nan"))
                w4a4_linear(x, layer, out=y, path=p)
                row[p + "_err"] = ((y.float() - ref).norm() / ref.norm()).item()
                row[p + "_total_ms"] = t(lambda: w4a4_linear(x, layer, out=y, path=p))
                row[p + "_tile"] = str(getattr(gemm_mod._w4a4_fp8, "best_config", None))
                row[p + "_vs_bf16"] = row["bf16_ms"] / row[p + "_total_ms"]
            row["fp8_quantize_ms"] = t(lambda: quantize_activations(x, layer, fp8=True))
            row["shipped_vs_bf16"] = row["bf16_ms"] / row["shipped_total_ms"]
            for name in [v for v in a.variants.split(",") if v]:
                best = None
                for tile in TILES:
                    qa = q
                    try:
                        y.fill_(float("nan"))
                        run_variant(name, qa, sx, lr, layer, y, tile)
                        err = ((y.float() - ref).norm() / ref.norm()).item()
                        ms = t(lambda: run_variant(name, qa, sx, lr, layer, y, tile))
                    except Exception as e:   # a tile that does not fit this variant's shared memory
                        print(name, tile, "failed:", str(e).split("\n")[0][:120])
                        continue
                    if best is None or ms < best[0]:
                        best = (ms, tile, err)
                if best:
                    row[name + "_ms"], row[name + "_tile"], row[name + "_err"] = best
                    row[name + "_vs_bf16"] = row["bf16_ms"] / best[0]
            rows.append(row)
            print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
