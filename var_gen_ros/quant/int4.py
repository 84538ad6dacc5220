"""Signed INT4 group quantization with explicit packing (two values per byte).

Layout (the one the kernels read): a row of K int4 values is stored as K/2 bytes; byte j holds
element 2j in its low nibble and element 2j+1 in its high nibble, each as 4-bit two's complement.
Scales are symmetric, one per group of `group` consecutive values along K: s = amax / 7, so the
codes use [-7, 7] (-8 is never produced; it stays valid for unpacking). Weight scales are stored in
the parameter dtype (bf16); activation scales are rounded to bf16 too (`act_scales`).
"""
from __future__ import annotations

import torch

QMAX = 7
INV_QMAX = torch.tensor(1.0 / QMAX, dtype=torch.float32).item()   # float32(1/7) as a Python float


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int tensor (..., K) with values in [-8, 7] -> uint8 (..., K/2)."""
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4: last dim {q.shape[-1]} is odd")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("pack_int4: values outside [-8, 7]")
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """uint8 (..., K/2) -> int8 (..., K), sign-extended."""
    lo = (p & 0xF).to(torch.int8)
    hi = (p >> 4).to(torch.int8)
    both = torch.stack([lo, hi], dim=-1).flatten(-2)
    return torch.where(both >= 8, both - 16, both)


def group_scales(x: torch.Tensor, group: int) -> torch.Tensor:
    """(..., K) -> (..., K/group) float32 scales amax/7 (a zero group gets scale 1 so it maps to 0)."""
    K = x.shape[-1]
    if K % group:
        raise ValueError(f"K={K} is not a multiple of the group size {group}")
    amax = x.float().unflatten(-1, (K // group, group)).abs().amax(-1)
    # an explicit float32 multiply by 1/7 (what CUDA torch does for a division by a scalar anyway),
    # so that CPU, GPU and the kernels compute bit-identical scales
    return torch.where(amax > 0, amax * INV_QMAX, torch.ones_like(amax))


def act_scales(x: torch.Tensor, group: int) -> torch.Tensor:
    """Activation scales: amax/7 per group, rounded to bf16 (8 significant bits, within 2^-8) like the weights'.
    A 4-bit code times such a scale has at most 11 significant bits, so it is exact in fp16: that lets
    the large-M GEMM on Hopper (no INT4 tensor cores) run on fp16 tensor cores over the dequantized
    operands, with no per-group rescale and the same result (kernels/w4a4_gemm_triton.py)."""
    return group_scales(x, group).to(torch.bfloat16).float()


def quantize_groups(x: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """(..., K) with (..., K/group) scales -> int8 codes in [-7, 7] (round half to even)."""
    xs = x.float().unflatten(-1, (-1, group)) / scales.float().unsqueeze(-1)
    return xs.round().clamp(-QMAX - 1, QMAX).to(torch.int8).flatten(-2)


def dequantize_groups(q: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """int codes (..., K), scales (..., K/group) -> float32 (..., K)."""
    return (q.float().unflatten(-1, (-1, group)) * scales.float().unsqueeze(-1)).flatten(-2)


def fake_quant_int4(x: torch.Tensor, group: int) -> torch.Tensor:
    """Quantize-dequantize per group along the last dim with dynamic amax/7 scales (float32 out).
    This is exactly what the W4A4 kernels do to activations, per token."""
    s = act_scales(x, group)
    return dequantize_groups(quantize_groups(x, s, group), s, group)
