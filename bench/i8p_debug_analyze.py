"""Reads the cases bench/i8p_debug.py saved on a GPU machine (i8p_debug_case*.pt) and, on any machine, tries models of
what a wrong i8p kernel might compute: each model's output from the case's inputs in PyTorch, against the kernel's
output (exact matches out of all). The model that matches names the bug: the codes' nibble or byte order within a
word, the multiplier of a neighbouring group, a K step left out or counted twice, a split share lost, the 16-byte
chunks of a code tile's rows swizzled another way, the output transposed.

    python3 bench/i8p_debug_analyze.py DIR
"""
import glob
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from var_gen_ros.quant.int4 import unpack_int4   # noqa: E402


def _weights(qweight, wscales, wu, nibble_swap=False, mult_shift=0):
    """(N, K) float64 q·m, optionally with the nibbles of each byte swapped or each group taking the multiplier of the
    group `mult_shift` away (wrapping)."""
    p = qweight
    if nibble_swap:
        p = ((p & 0x0F) << 4) | (p >> 4)
    mult = torch.round(wscales.float() / wu[:, None])
    if mult_shift:
        mult = torch.roll(mult, mult_shift, dims=1)
    return unpack_int4(p).double() * mult.double().repeat_interleave(64, dim=1)


def _swizzled(w8, xor_rows):
    """Each 128-wide K step's code tile with the 16-byte chunks of row r taken from chunk c ^ (r // xor_rows % 8)."""
    N, K = w8.shape
    out = w8.clone().view(N, K // 128, 8, 16)
    r = torch.arange(N)[:, None]
    c = torch.arange(8)[None, :]
    src = c ^ (r // xor_rows % 8)
    return torch.gather(out, 2, src[:, None, :, None].expand(N, K // 128, 8, 16)).reshape(N, K)


def _out(q, w8, ux, wu, steps=None):
    """bf16(float32(Σ q·w over the K steps listed, or all) · u_x · u_w)."""
    qd = q.double()
    if steps is not None:
        mask = torch.zeros(q.shape[1], dtype=torch.float64)
        for s in steps:
            mask[s * 128:(s + 1) * 128] += 1
        qd = qd * mask
    return ((qd @ w8.t()).float() * (ux[:, None] * wu[None, :])).bfloat16()


def models(case: dict) -> dict:
    q, qw, ws, wu, ux = case["q"], case["qweight"], case["wscales"], case["wu"], case["ux"]
    K = q.shape[1]
    T = K // 128
    w8 = _weights(qw, ws, wu)
    out = {"correct": _out(q, w8, ux, wu),
           "nibbles swapped": _out(q, _weights(qw, ws, wu, nibble_swap=True), ux, wu),
           "multiplier of the next group": _out(q, _weights(qw, ws, wu, mult_shift=-1), ux, wu),
           "multiplier of the previous group": _out(q, _weights(qw, ws, wu, mult_shift=1), ux, wu),
           "first K step left out": _out(q, w8, ux, wu, range(1, T)),
           "last K step left out": _out(q, w8, ux, wu, range(0, T - 1)),
           "first K step twice": _out(q, w8, ux, wu, [0] + list(range(T))),
           "second half of K lost (a split share)": _out(q, w8, ux, wu, range(0, (T + 1) // 2)),
           "first half of K lost (a split share)": _out(q, w8, ux, wu, range((T + 1) // 2, T)),
           "codes 0-3 and 4-7 of a word swapped": _out(
               q, w8.view(w8.shape[0], -1, 2, 4).flip(2).reshape(w8.shape), ux, wu)}
    for xr in (1, 2, 4):
        out[f"code tile chunks swizzled by row // {xr}"] = _out(q, _swizzled(w8, xr), ux, wu)
    return out


def main() -> int:
    d = sys.argv[1] if len(sys.argv) > 1 else "."
    files = sorted(glob.glob(os.path.join(d, "i8p_debug_case*.pt")))
    if not files:
        print(f"no i8p_debug_case*.pt in {d}")
        return 1
    for f in files:
        case = torch.load(f)
        y = case["y"]
        print(f"{os.path.basename(f)}: M {case['M']} N {case['N']} K {case['K']} {case['tile']}"
              + (f" error {case['error'][:200]}" if case.get("error") else ""))
        for name, ym in models(case).items():
            same = int((ym == y).sum())
            print(f"  {same / y.numel():7.2%} equal to: {name}")
        t = y.t().contiguous()
        print(f"  transposed output possible: {y.shape[0] == y.shape[1] and bool(torch.equal(t, case['ref']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
