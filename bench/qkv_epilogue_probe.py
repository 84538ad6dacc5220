"""Where the time of the qkv-epilogue GEMM (`w4a4_qkv_rope`) goes: the kernel as it is against variants
made by editing a copy of its source (the epilogue's parts removed or changed one at a time), each
timed by CUDA-graph replay at a fixed tile, beside the plain i8 GEMM of the same shape (bf16 output),
with the compiled kernel's registers and spills.

    python3 bench/qkv_epilogue_probe.py [--tokens 2048] [--json out.json]
"""
import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile

import torch
import triton.testing as tt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import _layer           # noqa: E402

KERNEL = os.path.join(ROOT, "kernels", "w4a4_gemm_triton.py")
# (name, [(text in the kernel source, its replacement at every occurrence)])
VARIANTS = [
    ("as is", []),
    ("no normalize / rope (all stored like v)", [("    if sec == 2:\n        _store_head(VO", "    if sec >= 0:\n        _store_head(VO")]),
    ("reciprocal instead of division", [("x0, x1 = libdevice.div_rn(x0, nrm), libdevice.div_rn(x1, nrm)",
                                         "r = libdevice.div_rn(1.0, nrm)\n            x0, x1 = x0 * r, x1 * r")]),
    ("one weight dot (the odd channels' accumulator a copy)",
     [("acc1 = tl.dot(a, tl.trans(w_desc.load([pid_n * HALF, K + k])), acc1, out_dtype=tl.int32)", "acc1 = acc0"),
      ("            acc1 = tl.dot(a, tl.trans(tl.load(w_ptrs + K)), acc1, out_dtype=tl.int32)", "            acc1 = acc0")]),
    ("two stores with a stride of 2 elements (the first version)",
     [("    tl.store(rows[:, None] + d[None, :], tl.reshape(tl.join(x0, x1), x0.shape[0], HEAD).to(rows.dtype.element_ty),\n"
       "             mask=mask[:, None])",
       "    i = tl.arange(0, HEAD // 2)\n"
       "    tl.store(rows[:, None] + 2 * i[None, :], x0.to(rows.dtype.element_ty), mask=mask[:, None])\n"
       "    tl.store(rows[:, None] + 2 * i[None, :] + 1, x1.to(rows.dtype.element_ty), mask=mask[:, None])")]),
    ("halves side by side (wrong layout, timing only)",
     [("    tl.store(rows[:, None] + d[None, :], tl.reshape(tl.join(x0, x1), x0.shape[0], HEAD).to(rows.dtype.element_ty),\n"
       "             mask=mask[:, None])",
       "    i = tl.arange(0, HEAD // 2)\n"
       "    tl.store(rows[:, None] + i[None, :], x0.to(rows.dtype.element_ty), mask=mask[:, None])\n"
       "    tl.store(rows[:, None] + HEAD // 2 + i[None, :], x1.to(rows.dtype.element_ty), mask=mask[:, None])")]),
    ("no low-rank / bias in the epilogue", [("    x0 = _lowrank_bias(x0, rm, ce, mmask", "    x0 = x0 if True else _lowrank_bias(x0, rm, ce, mmask"),
                                            ("    x1 = _lowrank_bias(x1, rm, ce + 1, mmask", "    x1 = x1 if True else _lowrank_bias(x1, rm, ce + 1, mmask")]),
]


def _variant(name, edits, tmp):
    src = open(KERNEL).read()
    for old, new in edits:
        assert src.count(old) >= 1, (name, old)
        src = src.replace(old, new)
    pkg = os.path.join(tmp, f"probe{len(os.listdir(tmp))}")
    shutil.copytree(os.path.join(ROOT, "kernels"), pkg)
    with open(os.path.join(pkg, "w4a4_gemm_triton.py"), "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(os.path.basename(pkg), os.path.join(pkg, "__init__.py"),
                                                  submodule_search_locations=[pkg])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[os.path.basename(pkg)] = mod
    spec.loader.exec_module(mod)
    return importlib.import_module(f"{os.path.basename(pkg)}.w4a4_gemm_triton")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from var_gen_ros.infinity.model import SelfAttention
    B, H, c, K, n = 2, 28, 128, 3584, a.tokens
    sa = SelfAttention(H * c, H).to("cuda", torch.bfloat16)
    bias, sm = sa.qkv_constants()
    layer = _layer(K, 3 * H * c, False, seed=5)
    x = torch.randn(B, n, K, device="cuda", dtype=torch.bfloat16)
    ang = torch.rand(n, c // 2, device="cuda") * 100
    rope = torch.stack([ang.cos(), ang.sin()])
    q, k, v = sa.qkv_buffers(x, n, store=True)
    tmp = tempfile.mkdtemp()
    rows = []
    for cfg in (dict(BLOCK_M=128, KSTEP=128, TMA=True, num_warps=8, num_stages=4),
                dict(BLOCK_M=128, KSTEP=128, TMA=False, num_warps=8, num_stages=4)):
        for name, edits in VARIANTS:
            mod = _variant(name, edits, tmp)
            fn = lambda: mod.w4a4_qkv_rope(x, layer, bias, sm.view(-1), rope, q, k, v, 0, config=cfg, path="i8w")
            fn()
            try:       # the compiled kernel, for its registers and spills
                kern = list(mod._w4a4_i8_qkv_kernel.device_caches[torch.cuda.current_device()][0].values())[-1]
            except Exception:
                kern = None
            r = {"variant": name, "config": cfg, "graph_ms": tt.do_bench_cudagraph(fn, rep=50, return_mode="median"),
                 "regs": getattr(kern, "n_regs", None), "spills": getattr(kern, "n_spills", None)}
            print(json.dumps(r), flush=True)
            rows.append(r)
    mod = _variant("plain", [], tmp)
    plain = {"variant": "plain i8 GEMM, bf16 output (128x128, KSTEP 128, TMA, 4 stages)",
             "graph_ms": tt.do_bench_cudagraph(lambda: mod.w4a4_linear(x, layer, path="i8w", config=dict(
                 BLOCK_M=128, BLOCK_N=128, SWAP=False, KSTEP=128, TMA=True, num_warps=8, num_stages=4)),
                 rep=50, return_mode="median")}
    print(json.dumps(plain), flush=True)
    rows.append(plain)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "tokens": n, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
