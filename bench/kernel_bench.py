"""Kernels vs their baselines, side by side in one run (median times, triton.testing):

GEMM: W4A4 kernel (activation quantization + low-rank + GEMM; the default path for the GPU and M,
plus every path at every M) vs bf16 cuBLAS (torch.matmul), every
Infinity-8B Linear shape, M in {2, 32, 128, 512, 2048, 8192}; timed twice: eager launches
(`do_bench`, includes the CPU cost of launching) and replayed from a CUDA graph
(`do_bench_cudagraph`, GPU time only, as a graph-captured pipeline would see it); up to M = 512 also
with the weights cold in the L2 (`_cold_l2`), as a generation sees them.
Attention: the INT8-KV kernel vs bf16 SDPA (flash, and SDPA's own pick: cuDNN on the H100) vs the reference (dequantize the cache + SDPA)
at every scale of a 1024x1024 Infinity-8B generation with CFG (B=2, 28 heads of 128).
qkv epilogue: the fused kernel (bias, normalize, scale, RoPE into the attention buffers) vs the
PyTorch reference (SelfAttention.qkv_epilogue + copy into the buffers) on a bf16 projection output,
time and the allocator's peak above the inputs, at slice sizes up to the last scale's 4096 tokens.
qkv GEMM: the W4A4 qkv projection with that epilogue in its GEMM vs the W4A4 GEMM then the epilogue
kernel vs bf16 cuBLAS then the epilogue kernel, at a 1024² generation's slice sizes.
Modulated LayerNorm: the fused kernel (LN, AdaLN scale/shift, bf16 out) vs the PyTorch reference
(model.modulated_norm's ops), the same slice sizes.

    python3 bench/kernel_bench.py --json out.json [--reference]
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import MS, SCALES_1024, SHAPES_8B, _kv_case, _layer   # noqa: E402


def _time(fn, graph: bool):
    import triton.testing as tt
    if graph:
        return tt.do_bench_cudagraph(fn, rep=100, return_mode="median")
    return tt.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _parts(mod, x, layer):
    """Graph ms of the pieces: kernel 1 in its fp8 and f16 layouts, the two weight workspaces."""
    import triton
    K, N = layer.in_features, layer.out_features
    w8 = torch.empty(N, K, dtype=torch.float8_e4m3fn, device="cuda")
    wi8 = torch.empty(N, K, dtype=torch.int8, device="cuda")
    w16 = torch.empty(N, K, dtype=torch.float16, device="cuda")
    grid = (triton.cdiv(N, 64), K // 64)
    wu = layer.weight_units()
    return {"quantize_fp8_ms": _time(lambda: mod.quantize_activations(x, layer, fp8=True), True),
            "quantize_f16_ms": _time(lambda: mod.quantize_activations(x, layer, f16=True), True),
            "quantize_i8_ms": _time(lambda: mod.quantize_activations(x, layer, i8=True), True),
            "unpack_w_i8_ms": _time(lambda: mod._unpack_weight_i8[grid](layer.qweight, layer.wscales, wu, wi8, N, K,
                                                                        BLOCK_N=64, GROUP=64), True),
            "unpack_w_fp8_ms": _time(lambda: mod._unpack_weight_fp8[grid](layer.qweight, w8, N, K, BLOCK_N=64, GROUP=64), True),
            "dequant_w_f16_ms": _time(lambda: mod._dequant_weight_f16[grid](layer.qweight, layer.wscales, w16, N, K,
                                                                            BLOCK_N=64, GROUP=64), True)}


# Up to this M the GEMMs stream their weights (memory-bound), so the table also times them with the weights
# cold in the L2, as in a generation, where 40 blocks' weights pass through it: a replay of one call each on
# `n` copies of the layer, n such that even the W4A4 copies exceed the L2 (50 MB on the H100) three times
# over. Timed on one layer, a bf16 weight of up to 50 MB (3584², 2048x7168) stays in the L2 between
# replays and streams at L2 speed.
COLD_MAX_M = 512


def _cold_l2(fn, x, layer, w, y_b, y_q) -> dict:
    import copy
    n = max(2, -(-(160 << 20) // layer.nbytes))
    layers = [copy.deepcopy(layer) for _ in range(n)]
    ws = [torch.randn_like(w) for _ in range(n)]
    for lay in layers:
        fn(x, lay, out=y_q)
    r = {"cold_copies": n,
         "graph_cold_bf16_ms": _time(lambda: [torch.matmul(x, wi.t(), out=y_b) for wi in ws], True) / n,
         "graph_cold_w4a4_ms": _time(lambda: [fn(x, lay, out=y_q) for lay in layers], True) / n}
    r["graph_cold_speedup"] = r["graph_cold_bf16_ms"] / r["graph_cold_w4a4_ms"]
    return r


def bench_gemm(reference: bool, shapes=None, ms=None, paths=("fp8", "fp8w", "f16", "f16w", "i8", "i8w"), parts=False):
    from var_gen_ros.quant.dispatch import w4a4_kernel
    from kernels_under_test import gemm_module
    rows = []
    print(f"{'K':>6} {'N':>6} {'M':>5} | {'bf16':>7} {'w4a4':>7} {'x':>5} | graph: {'bf16':>7} {'w4a4':>7} {'x':>5} "
          f"{'TOPS':>6} | {'ref ms':>7}")
    for K, N, bias in SHAPES_8B:
        if shapes and f"{K}x{N}" not in shapes:
            continue
        layer = _layer(K, N, bias, 0)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        w16 = w.half()
        for M in ms or MS:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            x16 = x.half()
            fn = w4a4_kernel(x)
            fn(x, layer)                                   # autotune outside the timed region
            y_b = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            y_h = torch.empty(M, N, device="cuda", dtype=torch.float16)
            y_q = torch.empty_like(y_b)
            r = {"K": K, "N": N, "M": M, "default_path": gemm_module().path_for(x, layer)}
            for graph in (False, True):
                tag = "graph_" if graph else ""
                r[tag + "bf16_ms"] = _time(lambda: torch.matmul(x, w.t(), out=y_b), graph)
                r[tag + "w4a4_ms"] = _time(lambda: fn(x, layer, out=y_q), graph)
                r[tag + "speedup"] = r[tag + "bf16_ms"] / r[tag + "w4a4_ms"]
            r["graph_w4a4_tops"] = 2 * M * N * K / r["graph_w4a4_ms"] / 1e9
            if M <= COLD_MAX_M:
                r.update(_cold_l2(fn, x, layer, w, y_b, y_q))
            # cuBLAS fp16 on operands of the same shape: the f16 paths' GEMM alone, their ceiling
            r["graph_fp16_cublas_ms"] = _time(lambda: torch.matmul(x16, w16.t(), out=y_h), True)
            # each W4A4 path at every M (the dispatcher picks by M; this is the crossover data)
            for p in paths:
                fn(x, layer, out=y_q, path=p)              # autotune outside the timed region
                r[f"graph_{p}_path_ms"] = _time(lambda: fn(x, layer, out=y_q, path=p), True)
            r["ref_ms"] = _time(lambda: layer.reference_forward(x), False) if reference else None
            if parts:
                r.update(_parts(gemm_module(), x, layer))
                print("   parts (graph ms): " + json.dumps({k: round(v, 4) for k, v in r.items() if k.startswith(("quantize_", "unpack_", "dequant_"))}))
            rows.append(r)
            print(f"{K:6d} {N:6d} {M:5d} | {r['bf16_ms']:7.4f} {r['w4a4_ms']:7.4f} {r['speedup']:5.2f} | "
                  f"       {r['graph_bf16_ms']:7.4f} {r['graph_w4a4_ms']:7.4f} {r['graph_speedup']:5.2f} "
                  f"{r['graph_w4a4_tops']:6.0f} {r['default_path']:>4} | fp16 cuBLAS {r['graph_fp16_cublas_ms']:.4f} " +
                  (f"| cold L2 ({r['cold_copies']} copies): bf16 {r['graph_cold_bf16_ms']:.4f} w4a4 "
                   f"{r['graph_cold_w4a4_ms']:.4f} x{r['graph_cold_speedup']:.2f} " if "cold_copies" in r else "") +
                  " ".join(f"{p} {r[f'graph_{p}_path_ms']:.4f}" for p in paths) + " | "
                  f"{r['ref_ms'] if r['ref_ms'] is None else round(r['ref_ms'], 4)}",
                  flush=True)
    return rows


def bench_attention():
    from var_gen_ros.quant.dispatch import int8_attention_kernel
    from var_gen_ros.quant.kv_int8 import dequantize_asym
    rows = []
    print(f"\n{'scale':>5} {'Lq':>5} {'Lk':>6} | {'sdpa bf16':>9} {'int8 kern':>9} {'x':>5} | {'deq+sdpa':>9} | graph: "
          f"{'sdpa':>7} {'int8':>7} {'x':>5}")
    n = len(SCALES_1024)
    for si in range(n):
        last = si == n - 1
        lq = SCALES_1024[si]
        n_cached = sum(SCALES_1024[:si]) if last else sum(SCALES_1024[:si + 1])
        q, kq, vq, prm, kt, vt = _kv_case(n_cached, lq if last else 0, lq, seed=si)
        ks, kz, vs, vz = prm
        fn = int8_attention_kernel(q)
        tail = (kt, vt) if last else (None, None)
        o = torch.empty_like(q)
        fn(q, kq, vq, n_cached, *prm, *tail, out=o)        # autotune outside the timed region
        # the same keys/values in bf16 for SDPA (what a bf16 KV cache holds)
        K = dequantize_asym(kq[:, :, :n_cached], ks, kz).bfloat16()
        V = dequantize_asym(vq[:, :, :n_cached], vs, vz).bfloat16()
        if last:
            K, V = torch.cat([K, kt], 2), torch.cat([V, vt], 2)

        def reference():   # what Int8KVCache did before the kernel: dequantize everything, then SDPA
            Kd = dequantize_asym(kq[:, :, :n_cached], ks, kz)
            Vd = dequantize_asym(vq[:, :, :n_cached], vs, vz)
            if last:
                Kd, Vd = torch.cat([Kd.to(q.dtype), kt], 2), torch.cat([Vd.to(q.dtype), vt], 2)
            return F.scaled_dot_product_attention(q, Kd.to(q.dtype), Vd.to(q.dtype), scale=1.0)

        r = {"scale": si, "Lq": lq, "Lk": K.shape[2]}
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            r["sdpa_bf16_ms"] = _time(lambda: F.scaled_dot_product_attention(q, K, V, scale=1.0), False)
            r["graph_sdpa_bf16_ms"] = _time(lambda: F.scaled_dot_product_attention(q, K, V, scale=1.0), True)
        # SDPA's own pick (cuDNN's fused attention on the H100): what the bf16 pipeline runs
        r["graph_sdpa_default_ms"] = _time(lambda: F.scaled_dot_product_attention(q, K, V, scale=1.0), True)
        r["int8_kernel_ms"] = _time(lambda: fn(q, kq, vq, n_cached, *prm, *tail, out=o), False)
        r["graph_int8_kernel_ms"] = _time(lambda: fn(q, kq, vq, n_cached, *prm, *tail, out=o), True)
        # the large scales' path: each head group's K/V dequantized into a bounded bf16 buffer, then SDPA
        from kernels_under_test import attention_module
        mod = attention_module()
        qc = q.clone()
        for tag, heads in (("", None), ("_all_heads", 28)):
            r[f"graph_int8_sdpa{tag}_ms"] = _time(
                lambda: mod.int8_kv_attention_sdpa(qc, kq, vq, n_cached, *prm, *tail, out=qc, heads=heads), True)
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            mod.int8_kv_attention_sdpa(qc, kq, vq, n_cached, *prm, *tail, out=qc, heads=heads)
            r[f"int8_sdpa{tag}_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        r["int8_sdpa_heads"] = mod.sdpa_head_group(2, 28, r["Lk"], 128)
        r["reference_ms"] = _time(reference, False)
        r["speedup"] = r["sdpa_bf16_ms"] / r["int8_kernel_ms"]
        r["graph_speedup"] = r["graph_sdpa_bf16_ms"] / r["graph_int8_kernel_ms"]
        r["graph_speedup_vs_default"] = r["graph_sdpa_default_ms"] / r["graph_int8_kernel_ms"]
        r["kernel_tflops"] = 4 * 2 * 28 * lq * r["Lk"] * 128 / r["graph_int8_kernel_ms"] / 1e9
        rows.append(r)
        print(f"{si:5d} {lq:5d} {r['Lk']:6d} | {r['sdpa_bf16_ms']:9.4f} {r['int8_kernel_ms']:9.4f} {r['speedup']:5.2f} | "
              f"{r['reference_ms']:9.4f} |        {r['graph_sdpa_bf16_ms']:7.4f} {r['graph_int8_kernel_ms']:7.4f} "
              f"{r['graph_speedup']:5.2f} | sdpa default {r['graph_sdpa_default_ms']:7.4f} "
              f"{r['graph_speedup_vs_default']:5.2f} | int8 deq+sdpa ({r['int8_sdpa_heads']} heads) "
              f"{r['graph_int8_sdpa_ms']:7.4f} +{r['int8_sdpa_extra_mib']:.0f} MiB, all heads "
              f"{r['graph_int8_sdpa_all_heads_ms']:7.4f} +{r['int8_sdpa_all_heads_extra_mib']:.0f} MiB", flush=True)
    tot = {k: sum(r[k] for r in rows) for k in ("sdpa_bf16_ms", "int8_kernel_ms", "reference_ms",
                                                 "graph_sdpa_bf16_ms", "graph_int8_kernel_ms", "graph_sdpa_default_ms",
                                                 "graph_int8_sdpa_ms", "graph_int8_sdpa_all_heads_ms")}
    # the faster of the two INT8 paths per scale (what a per-scale threshold can reach)
    tot["graph_int8_best_ms"] = sum(min(r["graph_int8_kernel_ms"], r["graph_int8_sdpa_ms"]) for r in rows)
    print("all scales (ms): " + json.dumps({k: round(v, 4) for k, v in tot.items()}))
    return rows, tot


def _fused_vs_reference(label: str, r: dict, run_fused, run_ref) -> dict:
    """Times (eager and graph-replayed) and the allocator's peak above the inputs of a fused kernel and
    its reference, into r with their ratios; prints the row."""
    with torch.no_grad():
        for name, fn in (("fused", run_fused), ("reference", run_ref)):
            fn()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            r[f"{name}_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
            r[f"{name}_ms"] = _time(fn, graph=False)
            r[f"graph_{name}_ms"] = _time(fn, graph=True)
    r["speedup_eager"] = r["reference_ms"] / r["fused_ms"]
    r["speedup_graph"] = r["graph_reference_ms"] / r["graph_fused_ms"]
    print(f"{label} " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    return r


def bench_qkv_epilogue(ns=(4, 64, 256, 1024, 2048, 4096)):
    from kernels_under_test import qkv_rope_module
    from var_gen_ros.infinity.model import SelfAttention
    fused = qkv_rope_module().qkv_rope
    B, H, c = 2, 28, 128
    sa = SelfAttention(H * c, H).to("cuda", torch.bfloat16)
    consts = sa.qkv_constants()
    rows = []
    for n in ns:
        qkv = torch.randn(B, n, 3 * H * c, device="cuda", dtype=torch.bfloat16)
        ang = torch.rand(n, c // 2, device="cuda") * 100
        rope = torch.stack([ang.cos(), ang.sin()])
        q, k, v = sa.qkv_buffers(qkv, n, store=True)

        def run_fused():
            fused(qkv, consts[0], consts[1].view(-1), rope, q, k, v, 0)

        def run_ref():
            q[:], k[:], v[:] = sa.qkv_epilogue(qkv, rope, consts)

        rows.append(_fused_vs_reference("qkv epilogue", {"tokens": n, "batch": B}, run_fused, run_ref))
    return rows


def bench_qkv_gemm(ns=(144, 256, 576, 1024, 2048)):
    """The self-attention's qkv projection and input epilogue at a 1024² generation's slice sizes (CFG):
    the W4A4 GEMM with the epilogue in it (`w4a4_qkv_rope`) vs the W4A4 GEMM, its bf16 output, then
    the epilogue kernel (as before) vs bf16 cuBLAS then the epilogue kernel (the bf16 model's path)."""
    from kernels_under_test import gemm_module, qkv_rope_module
    from var_gen_ros.infinity.model import SelfAttention
    gemm, qkv_rope = gemm_module(), qkv_rope_module().qkv_rope
    B, H, c, K = 2, 28, 128, 3584
    sa = SelfAttention(H * c, H).to("cuda", torch.bfloat16)
    with torch.no_grad():
        sa.q_bias.normal_()
        sa.v_bias.normal_()
    bias, sm = sa.qkv_constants()
    layer = _layer(K, 3 * H * c, False, seed=5)
    w = torch.randn(3 * H * c, K, device="cuda", dtype=torch.bfloat16) * K ** -0.5
    rows = []
    for n in ns:
        x = torch.randn(B, n, K, device="cuda", dtype=torch.bfloat16)
        ang = torch.rand(n, c // 2, device="cuda") * 100
        rope = torch.stack([ang.cos(), ang.sin()])
        q, k, v = sa.qkv_buffers(x, n, store=True)

        def run_fused():
            gemm.w4a4_qkv_rope(x, layer, bias, sm.view(-1), rope, q, k, v, 0)

        def run_separate():
            qkv_rope(gemm.w4a4_linear(x, layer), bias, sm.view(-1), rope, q, k, v, 0)

        def run_bf16():
            qkv_rope(F.linear(x, w), bias, sm.view(-1), rope, q, k, v, 0)

        r = {"tokens": n, "rows": B * n, "path": gemm.path_for(x.view(-1, K), layer),
             "fusable": gemm.qkv_fusable(x, layer, c)}
        with torch.no_grad():
            run_separate()
            sep = [t.clone() for t in (q, k, v)]
            run_fused()
            r["max_rel_diff_vs_separate"] = max(float((a.float() - b.float()).abs().max() / b.float().abs().max())
                                                for a, b in zip((q, k, v), sep))
            del sep
            r["graph_bf16_ms"] = _time(run_bf16, graph=True)
            r["bf16_ms"] = _time(run_bf16, graph=False)
        r = _fused_vs_reference("qkv gemm", r, run_fused, run_separate)
        r["graph_vs_bf16"] = r["graph_bf16_ms"] / r["graph_fused_ms"]
        r["eager_vs_bf16"] = r["bf16_ms"] / r["fused_ms"]
        rows.append(r)
    return rows


def bench_adaln(ns=(4, 64, 256, 1024, 2048, 4096)):
    from kernels_under_test import adaln_module
    from var_gen_ros.infinity.model import modulated_norm_reference
    fused = adaln_module().adaln
    B, C = 2, 3584
    ln = torch.nn.LayerNorm(C, eps=1e-6, elementwise_affine=False)
    s, sh = torch.randn(B, 1, C, device="cuda") * 0.3, torch.randn(B, 1, C, device="cuda")
    rows = []
    for n in ns:
        x = torch.randn(B, n, C, device="cuda")

        def run_fused():
            return fused(x, 1e-6, torch.bfloat16, None, None, s, sh)

        def run_ref():
            return modulated_norm_reference(x, ln, torch.bfloat16, s, sh)

        with torch.no_grad():
            diff = float((run_fused().float() - run_ref().float()).abs().max())
        rows.append(_fused_vs_reference("adaln", {"tokens": n, "batch": B, "max_abs_diff": diff}, run_fused, run_ref))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--reference", action="store_true", help="also time the dequantize+matmul GEMM reference")
    ap.add_argument("--only", choices=["gemm", "attention", "qkv", "qkv_gemm", "adaln"], default=None)
    ap.add_argument("--shapes", default=None, help="GEMM shapes KxN, comma-separated (default: all)")
    ap.add_argument("--ms", default=None, help="GEMM rows M, comma-separated (default: 2,32,128,512,2048,8192)")
    ap.add_argument("--paths", default="fp8,fp8w,f16,f16w",
                    help="W4A4 paths to time at every M besides the default, comma-separated ('' for none; int8 too)")
    ap.add_argument("--parts", action="store_true", help="also time kernel 1 and the weight workspaces alone")
    ap.add_argument("--no-paths", action="store_true", help="time only the default path (same as --paths '')")
    a = ap.parse_args()
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if a.only in (None, "gemm"):
        out["gemm"] = bench_gemm(a.reference, a.shapes.split(",") if a.shapes else None,
                                 [int(m) for m in a.ms.split(",")] if a.ms else None,
                                 tuple(p for p in a.paths.split(",") if p and not a.no_paths), a.parts)
        mod = __import__("kernels_under_test").gemm_module()
        out.update(split_max_m=mod.SPLIT_MAX_M, unpack_min_m=mod.UNPACK_MIN_M, f16_min_m=mod.F16_MIN_M,
                   f16w_min_m=mod.F16W_MIN_M, i8w_min_m=mod.I8W_MIN_M)
    if a.only in (None, "attention"):
        out["attention"], out["attention_total_ms"] = bench_attention()
    if a.only in (None, "qkv"):
        out["qkv_epilogue"] = bench_qkv_epilogue()
    if a.only in (None, "qkv_gemm"):
        out["qkv_gemm"] = bench_qkv_gemm()
    if a.only in (None, "adaln"):
        out["adaln"] = bench_adaln()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
