"""When an i8p GPU test fails: small cases of `i8p_gemm` (kernels/i8_mainloop_gluon.py) without the low-rank term and
bias, whose output must equal bf16(float32(exact int32 sums) · u_x · u_w) bit for bit, each saved with its inputs to
one .pt file, so that the pattern of wrong outputs (whole tiles, rows, columns, K steps, split shares) can be studied
on a machine without a GPU. Prints, per case, how many outputs differ and which rows / columns / 64-wide column blocks.

    python3 bench/i8p_debug.py --out DIR

With --ws, the warp-specialized kernel's cases instead (`_i8p_ws_kernel`, whose GPU test was killed at 150 s with no
output in the fifty-first session): each in its own process under --case-timeout seconds, compiled first and then run,
so that a hang is told from a slow compile and from a wrong result, and which launches hang (swapped or not, K split or
not, the ring depths STAGES and WB, one K step). Its mbarrier protocol was checked on the CPU by a model of the three
partitions over random interleavings (deadlock-free and race-free from WB = 2; WB = 1 deadlocks by construction:
the codes tile is released one step after the wgmma that reads it), so a hang points below the protocol.
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


_SWAP72 = dict(swap=True, block_m=128, block_n=64, num_warps=4, instr_n=128, split_k=1)
_ROWS256 = dict(swap=False, block_m=128, block_n=128, num_warps=8, instr_n=128, split_k=1)
WS_CASES = [  # (M, N, K, tile): the warp-specialized kernel (ws=True added)
    (72, 256, 128, _SWAP72),                                 # one K step
    (72, 256, 512, _SWAP72),
    (72, 256, 512, dict(_SWAP72, stages=2)),
    (72, 256, 512, dict(_SWAP72, wb=3)),
    (32, 128, 256, dict(_SWAP72, block_m=32, instr_n=32)),
    (72, 256, 1024, dict(_SWAP72, split_k=2)),
    (256, 256, 512, _ROWS256),
    (256, 256, 512, dict(_ROWS256, stages=3)),
    (256, 256, 2048, dict(_ROWS256, split_k=2)),
]


def _where(bad: torch.Tensor, dim: int, n: int = 12) -> list:
    idx = bad.any(dim=dim).nonzero().flatten().tolist()
    return idx[:n] + (["..."] if len(idx) > n else [])


def _case(c: int, M: int, N: int, K: int):
    """Case c's inputs: (the Gluon module, (layer, its weight units, kernel 1's q·m and row units), the exact sums
    scaled and rounded to bf16, a poisoned output)."""
    from test_kernels_gpu import _i8_weights, _layer
    gm = kernel_module("w4a4_gemm_triton")
    layer = _layer(K, N, False, seed=c)
    wu = layer.weight_units()
    x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
    q, ux, _ = gm.quantize_activations(x, layer, i8=True)
    ref = ((q.double() @ _i8_weights(layer).double().t()).float() * (ux[:, None] * wu[None, :])).bfloat16()
    return gm._gluon(), (layer, wu, q, ux), ref, torch.full((M, N), float("nan"), dtype=torch.bfloat16, device="cuda")


def _ws_probe(a) -> int:
    """Each WS_CASES entry in a child process (`--ws-case`), killed after a.case_timeout seconds."""
    import subprocess
    import time
    failed = 0
    for c, (M, N, K, tile) in enumerate(WS_CASES):
        t0 = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--out", a.out, "--ws-case", str(c)],
                               capture_output=True, text=True, timeout=a.case_timeout)
            lines = (r.stdout + r.stderr).strip().splitlines()
            what = lines[-1] if lines else f"exit {r.returncode}, no output"
            failed += r.returncode != 0
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace").strip().splitlines()
            what = f"HUNG: killed after {a.case_timeout} s; its last line: {out[-1] if out else '(none)'}"
            failed += 1
        print(f"ws case {c}: M {M} N {N} K {K} {tile}: {what} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return 1 if failed else 0


def _ws_case(c: int) -> int:
    """One warp-specialized case: compiled (timed), then run; its output against the exact sums, bit for bit."""
    import time
    M, N, K, tile = WS_CASES[c]
    tile = dict(tile, ws=True)
    torch.manual_seed(c)
    glu, (layer, wu, q, ux), ref, y = _case(c, M, N, K)
    args = (q, layer.qweight, layer.wscales, wu, ux, None, layer.lora_up, None, 0, y)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    glu.i8p_gemm(*args, tile=tile, compile_only=True)
    print(f"compiled in {time.perf_counter() - t0:.1f} s; running", flush=True)
    t0 = time.perf_counter()
    glu.i8p_gemm(*args, tile=tile)
    torch.cuda.synchronize()
    n_bad = int(((y != ref) | torch.isnan(y.float())).sum())
    print(f"ran in {time.perf_counter() - t0:.3f} s: {n_bad} of {M * N} outputs differ", flush=True)
    return 1 if n_bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--ws", action="store_true", help="the warp-specialized kernel's cases, each in its own process")
    ap.add_argument("--case-timeout", type=float, default=60.0)
    ap.add_argument("--ws-case", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.ws_case is not None:
        return _ws_case(a.ws_case)
    if a.ws:
        return _ws_probe(a)
    torch.manual_seed(0)
    failed = 0
    for c, (M, N, K, tile) in enumerate(CASES):
        glu, (layer, wu, q, ux), ref, y = _case(c, M, N, K)
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
