"""Modulated LayerNorm: y = (LN(x) · w + b) · (1 + scale) + shift, one row per program, written in the
dtype of the layer that reads it.

Reference (var_gen_ros/infinity/model.py, `modulated_norm`): F.layer_norm in float32 (biased variance,
(x - mean) / sqrt(var + eps)), the optional affine weight and bias, then AdaLN's per-sample scale and
shift, then the cast to the next layer's compute dtype. Every transformer block runs it three times
per token (the self-attention input, the cross-attention's query norm, the FFN input). In PyTorch
that is four to five launches, each reading and writing a float32 (tokens x C) tensor, and the
float32 results sit beside each other at the slice loop's peak; here x is read once and the bf16
input of the next GEMM written once.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

_ON_GPU = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")


@triton.jit
def _adaln_kernel(X, W, Bi, S, SH, Y, n, C, eps, sx_b, sx_l, ss_b, sy_b, sy_l,
                  HAS_AFFINE: tl.constexpr, HAS_MOD: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)
    b, t = row // n, row % n
    cols = tl.arange(0, BLOCK_C)
    m = cols < C
    x = tl.load(X + b * sx_b + t * sx_l + cols, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / C
    d = tl.where(m, x - mean, 0.0)
    var = tl.sum(d * d, axis=0) / C
    if _ON_GPU:
        y = libdevice.div_rn(d, libdevice.sqrt_rn(var + eps))     # IEEE, as torch (Triton's are approximate)
    else:
        y = d / tl.sqrt(var + eps)
    if HAS_AFFINE:
        y = y * tl.load(W + cols, mask=m, other=0.0) + tl.load(Bi + cols, mask=m, other=0.0)
    if HAS_MOD:
        s = tl.load(S + b * ss_b + cols, mask=m, other=0.0)
        y = y * (s + 1.0) + tl.load(SH + b * ss_b + cols, mask=m, other=0.0)
    tl.store(Y + b * sy_b + t * sy_l + cols, y.to(Y.dtype.element_ty), mask=m)


def adaln(x: torch.Tensor, eps: float, out_dtype: torch.dtype, weight: torch.Tensor = None, bias: torch.Tensor = None,
          scale: torch.Tensor = None, shift: torch.Tensor = None) -> torch.Tensor:
    """x (B, n, C), last dim contiguous (a token slice of a larger tensor is fine); weight, bias (C,)
    float32 or None; scale, shift (B, 1, C) float32 or None. Returns (B, n, C) in out_dtype."""
    B, n, C = x.shape
    if x.stride(-1) != 1:
        raise ValueError("adaln: x needs contiguous channels")
    if (weight is None) != (bias is None) or (scale is None) != (shift is None):
        raise ValueError("adaln: weight and bias, scale and shift come in pairs")
    mod = scale is not None
    if mod:
        scale, shift = scale.expand(B, 1, C), shift.expand(B, 1, C)
        if scale.stride(-1) != 1 or shift.stride() != scale.stride():
            scale, shift = scale.contiguous(), shift.contiguous()
    y = torch.empty(B, n, C, dtype=out_dtype, device=x.device)
    if B * n == 0:
        return y
    block = triton.next_power_of_2(C)
    _adaln_kernel[(B * n,)](x, weight if weight is not None else x, bias if bias is not None else x,
                           scale if mod else x, shift if mod else x, y, n, C, float(eps),
                           x.stride(0), x.stride(1), scale.stride(0) if mod else 0, y.stride(0), y.stride(1),
                           HAS_AFFINE=weight is not None, HAS_MOD=mod, BLOCK_C=block,
                           num_warps=8 if block >= 2048 else 4)
    return y
