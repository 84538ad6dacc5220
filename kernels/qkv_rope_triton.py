"""Self-attention input epilogue: qkv projection output -> q, k, v in the attention layout, in one pass.

Reference: `SelfAttention.qkv` (var_gen_ros/infinity/model.py), in float32:
    qkv += [q_bias, zero_k_bias, v_bias];  split into heads;
    q = normalize(q) * scale_mul[h];  k = normalize(k);  q, k = rope(q), rope(k)
with normalize(x) = x / max(||x||, 1e-12) over a head's channels, and RoPE rotating interleaved
pairs (x[2i], x[2i+1]) by the token's (cos, sin)[i].

Why a kernel: in PyTorch that chain is ~20 launches per slice and, at its peak, holds a float32
copy of the whole (tokens x 3C) projection plus the normalized and rotated q and k beside it. At the
1024² last scale those temporaries are what sets the generation's peak memory (docs/BENCHMARKS.md,
ninth session). Here each program reads one head of a block of tokens once and writes q, k, v
straight into the (B, H, L, c) buffers the attention reads, at the slice's token offset, in the
buffers' dtypes (q in the attention dtype; k, v in float32 when the INT8 cache will quantize them).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

# the interpreter (CPU tests) has no libdevice; numpy's float32 `/` and sqrt are IEEE-exact there
_ON_GPU = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")


@triton.jit
def _normalized(x0, x1):
    """(x0, x1) = the even and odd channels of a head, (rows, c/2) each: divided by max(||x||, 1e-12),
    with IEEE sqrt and division as torch's F.normalize (Triton's defaults are approximate on the GPU)."""
    sq = tl.sum(x0 * x0, axis=1) + tl.sum(x1 * x1, axis=1)
    if _ON_GPU:
        d = tl.maximum(libdevice.sqrt_rn(sq), 1e-12)[:, None]
        return libdevice.div_rn(x0, d), libdevice.div_rn(x1, d)
    else:
        d = tl.maximum(tl.sqrt(sq), 1e-12)[:, None]
        return x0 / d, x1 / d


@triton.jit
def _store_pairs(ptr, x0, x1, mask):
    """Interleave even/odd channels back into one contiguous (rows, c) store."""
    tl.store(ptr, tl.reshape(tl.join(x0, x1), x0.shape[0], 2 * x0.shape[1]).to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _qkv_rope_kernel(X, BIAS, SM, COS, SIN, Q, K, V, L, C, a,
                     sx_b, sx_l, sr_l, sq_b, sq_h, sq_l, sk_b, sk_h, sk_l,
                     HEAD: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_l, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.arange(0, HEAD)
    i = tl.arange(0, HEAD // 2)
    tm = (t < L)[:, None]
    row = X + b * sx_b + t[:, None] * sx_l + h * HEAD + d[None, :]
    cos = tl.load(COS + t[:, None] * sr_l + i[None, :], mask=tm, other=1.0)
    sin = tl.load(SIN + t[:, None] * sr_l + i[None, :], mask=tm, other=0.0)
    dst = (a + t)[:, None]

    # q: bias, unit length, the head's learned scale, rotation
    x = tl.load(row, mask=tm, other=0.0).to(tl.float32) + tl.load(BIAS + h * HEAD + d)[None, :]
    x0, x1 = tl.split(tl.reshape(x, BLOCK_L, HEAD // 2, 2))
    x0, x1 = _normalized(x0, x1)
    s = tl.load(SM + h)
    x0, x1 = x0 * s, x1 * s
    _store_pairs(Q + b * sq_b + h * sq_h + dst * sq_l + d[None, :], cos * x0 - sin * x1, sin * x0 + cos * x1, tm)

    # k: bias (zero in trained checkpoints, kept for the reference's arithmetic), unit length, rotation
    x = tl.load(row + C, mask=tm, other=0.0).to(tl.float32) + tl.load(BIAS + C + h * HEAD + d)[None, :]
    x0, x1 = tl.split(tl.reshape(x, BLOCK_L, HEAD // 2, 2))
    x0, x1 = _normalized(x0, x1)
    _store_pairs(K + b * sk_b + h * sk_h + dst * sk_l + d[None, :], cos * x0 - sin * x1, sin * x0 + cos * x1, tm)

    # v: bias only
    x = tl.load(row + 2 * C, mask=tm, other=0.0).to(tl.float32) + tl.load(BIAS + 2 * C + h * HEAD + d)[None, :]
    tl.store(V + b * sk_b + h * sk_h + dst * sk_l + d[None, :], x.to(V.dtype.element_ty), mask=tm)


def qkv_rope(qkv: torch.Tensor, bias: torch.Tensor, scale_mul: torch.Tensor, rope: torch.Tensor,
             q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int = 0) -> None:
    """qkv (B, n, 3C) projection output (any float dtype, last dim contiguous); bias (3C,) and
    scale_mul (H,) float32; rope (2, n, c/2) float32 (this slice's rows); q, k, v (B, H, L, c) with
    contiguous channels, k and v alike. Writes tokens [start, start + n) of q, k, v."""
    B, n, C3 = qkv.shape
    _, H, L, c = q.shape
    C = C3 // 3
    if C != H * c or c & (c - 1) or c < 4:
        raise ValueError(f"qkv_rope: qkv width {C3} does not match {H} heads of {c} (a power of two)")
    if start + n > L or k.shape != v.shape or k.stride() != v.stride():
        raise ValueError(f"qkv_rope: {n} tokens at {start} do not fit q {tuple(q.shape)} / k, v {tuple(k.shape)}")
    for name, t in (("qkv", qkv), ("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"qkv_rope: {name} needs contiguous channels")
    if rope.stride(-1) != 1 or rope.shape[1] != n:
        rope = rope[:, :n].contiguous()
    block_l = 32 if c <= 128 else 16
    grid = (triton.cdiv(n, block_l), H, B)
    _qkv_rope_kernel[grid](qkv, bias, scale_mul, rope[0], rope[1], q, k, v, n, C, start,
                           qkv.stride(0), qkv.stride(1), rope.stride(1), q.stride(0), q.stride(1), q.stride(2),
                           k.stride(0), k.stride(1), k.stride(2), HEAD=c, BLOCK_L=block_l, num_warps=4)
