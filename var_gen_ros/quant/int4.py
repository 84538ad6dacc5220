"""Signed INT4 group quantization with explicit packing (two values per byte).

Layout (the one the kernels read): a row of K int4 values is stored as K/2 bytes; byte j holds
element 2j in its low nibble and element 2j+1 in its high nibble, each as 4-bit two's complement.
Scales are symmetric, one per group of `group` consecutive values along K, so the codes use [-7, 7]
(-8 is never produced; it stays valid for unpacking).

Scales are two-level (`two_level_scales`): s_g = u · m_g, a unit u per row (per token for activations,
per output channel for weights) times a small integer m_g in [1, 16] per group, m_g = ceil(amax_g/7/u)
with u = (max_g amax_g)/7/16 (rounded up to 4 significant bits for weights, so that u·m is exact in
the 16-bit parameter dtype). Then every q·m_g is an integer of at most 7·16 = 112: an int8. A GEMM
can multiply int8 q·m of both sides over all of K on INT8 tensor cores (exact int32 sums) and scale
by u_x·u_w once at the end, with no per-group rescale in its loop (the progressive group
quantization of QServe, Lin et al. 2024, applied to both operands). The price against free per-group
scales is the ceil to an integer m: 0.2-0.5 dB of SQNR on Gaussian-like data (docs/quantization.md).
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


def group_amax(x: torch.Tensor, group: int) -> torch.Tensor:
    """(..., K) -> (..., K/group) float32 absmax per group."""
    K = x.shape[-1]
    if K % group:
        raise ValueError(f"K={K} is not a multiple of the group size {group}")
    return x.float().unflatten(-1, (K // group, group)).abs().amax(-1)


def group_scales(x: torch.Tensor, group: int) -> torch.Tensor:
    """(..., K) -> (..., K/group) float32 free scales amax/7 (a zero group gets scale 1 so it maps to
    0). Not what the model uses (see `two_level_scales`); kept as the yardstick of what the two-level
    form costs."""
    amax = group_amax(x, group)
    # an explicit float32 multiply by 1/7 (what CUDA torch does for a division by a scalar anyway),
    # so that CPU, GPU and the kernels compute bit-identical scales
    return torch.where(amax > 0, amax * INV_QMAX, torch.ones_like(amax))


MMAX = 16                 # the largest per-group multiplier: 7 x 16 = 112 fits an int8


def round_up_bits(t: torch.Tensor, bits: int) -> torch.Tensor:
    """float32 t >= 0 rounded up to `bits` significant bits (exact bit operations)."""
    drop = 24 - bits
    i = t.float().contiguous().view(torch.int32)
    low = i & ((1 << drop) - 1)
    i = (i - low) + torch.where(low != 0, 1 << drop, 0).to(torch.int32)
    return i.view(torch.float32)


def two_level(x: torch.Tensor, group: int, unit_bits: int = 24):
    """(..., K) -> units u (..., 1) and integer multipliers m (..., K/group), both float32: u =
    max_g(amax_g · (1/7)) / 16 per row (rounded up to `unit_bits` significant bits: 24 keeps it as is;
    weights use 4, so u·m is exact in bf16), m_g = ceil((amax_g · (1/7)) / u) in [1, 16]. The scale
    u·m_g >= amax_g/7, so each group's largest element maps to ±7 and no code clips; a zero row gets
    u = 1/16."""
    t = group_amax(x, group) * INV_QMAX
    top = t.amax(-1, keepdim=True)
    u = torch.where(top > 0, top * (1.0 / MMAX), torch.full_like(top, 1.0 / MMAX))
    if unit_bits < 24:
        u = round_up_bits(u, unit_bits)
    m = torch.ceil(t / u).clamp(1, MMAX)        # IEEE float32 division, as the kernels' div_rn
    return u, m


def two_level_scales(x: torch.Tensor, group: int, unit_bits: int = 24) -> torch.Tensor:
    """(..., K) -> (..., K/group) float32 scales u·m_g (see `two_level`)."""
    u, m = two_level(x, group, unit_bits)
    return u * m


def act_scales(x: torch.Tensor, group: int) -> torch.Tensor:
    """Activation scales (per token): two-level with a float32 unit per row; the kernels compute on
    q·m (an int8) and multiply by u once per row."""
    return two_level_scales(x, group)


WEIGHT_UNIT_BITS = 4


def weight_scales(w: torch.Tensor, group: int) -> torch.Tensor:
    """Weight scales (per output channel): two-level with a unit of 4 significant bits, so that u·m
    (m <= 16: at most 4 significant bits) is exact in bf16 and fp16, the stored `wscales` dtype."""
    return two_level_scales(w, group, WEIGHT_UNIT_BITS)


def weight_units(wscales: torch.Tensor) -> "torch.Tensor | None":
    """(N, G) stored weight scales -> (N,) float32 units u with every s/u an integer in [1, 16], or None
    if some row has none (scales not of two-level form, e.g. a checkpoint quantized with free scales:
    those run on the kernels' other paths). Tries u = s_max / k for k = 16, 15, ..., 1 per row."""
    s = wscales.float()
    top = s.amax(-1, keepdim=True)
    best = torch.zeros_like(top)
    for k in range(1, MMAX + 1):           # the last k that fits wins: the largest multipliers
        u = top / torch.full_like(top, k)   # a tensor divisor: CUDA torch turns `/ k` into `* (1/k)`, inexact
        m = s / u
        ok = ((m == m.round()) & (m >= 1) & (m <= MMAX) & (u * m.round() == s)).all(-1, keepdim=True) & (top > 0)
        best = torch.where(ok, u, best)
    if not bool((best > 0).all()):
        return None
    return best.squeeze(-1)


def quantize_groups(x: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """(..., K) with (..., K/group) scales -> int8 codes in [-7, 7] (round half to even)."""
    # x · (1/s): one IEEE division per group, as the kernels do, instead of one per element
    xs = x.float().unflatten(-1, (-1, group)) * (1.0 / scales.float()).unsqueeze(-1)
    return xs.round().clamp(-QMAX - 1, QMAX).to(torch.int8).flatten(-2)


def dequantize_groups(q: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """int codes (..., K), scales (..., K/group) -> float32 (..., K)."""
    return (q.float().unflatten(-1, (-1, group)) * scales.float().unsqueeze(-1)).flatten(-2)


def fake_quant_int4(x: torch.Tensor, group: int) -> torch.Tensor:
    """Quantize-dequantize per group along the last dim with dynamic two-level scales (float32 out).
    This is exactly what the W4A4 kernels do to activations, per token."""
    s = act_scales(x, group)
    return dequantize_groups(quantize_groups(x, s, group), s, group)
