"""GroupNorm with its affine weight and bias, and the SiLU that follows it in the VAE decoder, over contiguous
(N, C, *spatial) activations: y = silu((x - mean_g) / sqrt(var_g + eps) · w_c + b_c), statistics in float32.

Reference (var_gen_ros/infinity/vae.py, `Normalize`): F.group_norm, then F.silu. Why a kernel: PyTorch's CUDA
GroupNorm reduces each (sample, group) row in one thread block. A 1024² decode has one image and 32 groups, so 32
blocks ran on the H100's 132 multiprocessors, over rows of 4-8 M elements: its statistics kernel took 45.7 of the
decode's 84 ms (bench/vae_decode.py, thirty-second session). Here each row is split over many programs:
- `_gn_partial_kernel`: one chunk of a row per program, its count, mean and sum of squared deviations, merged tile by
  tile (Chan's formula: one read of x, no cancellation of E[x²] - E[x]²);
- `_gn_apply_kernel`: each program merges its row's partials, then normalizes its chunk, applies the channel's
  weight and bias and the SiLU, and writes y: x read once more, y written once (PyTorch's norm and SiLU are two
  more passes).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 2048            # elements per tile
CHUNK = 16 * BLOCK      # elements of a row per program (a row of 4 M elements: 128 programs)


@triton.jit
def _gn_partial_kernel(X, PN, PM, PQ, S, P, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    part = tl.program_id(1)
    base = X + row.to(tl.int64) * S
    start = part * CHUNK
    n = 0.0
    mean = 0.0
    m2 = 0.0
    for off in range(0, CHUNK, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        m = idx < S
        x = tl.load(base + idx, mask=m, other=0.0).to(tl.float32)
        nb = tl.sum(m.to(tl.float32), axis=0)      # (0 for a tile past the row's end: it changes nothing)
        tmean = tl.sum(x, axis=0) / tl.maximum(nb, 1.0)
        d = tl.where(m, x - tmean, 0.0)
        tot = n + nb
        frac = nb / tl.maximum(tot, 1.0)
        delta = tmean - mean
        mean = mean + delta * frac
        m2 = m2 + tl.sum(d * d, axis=0) + delta * delta * n * frac
        n = tot
    tl.store(PN + row * P + part, n)
    tl.store(PM + row * P + part, mean)
    tl.store(PQ + row * P + part, m2)


@triton.jit
def _gn_apply_kernel(X, Y, W, B, PN, PM, PQ, S, P, HW, CG, G, eps,
                     SILU: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, BLOCK_P: tl.constexpr):
    row = tl.program_id(0)
    part = tl.program_id(1)
    # the row's statistics from its partials (Chan's formula over all of them at once)
    ps = tl.arange(0, BLOCK_P)
    pm = ps < P
    cn = tl.load(PN + row * P + ps, mask=pm, other=0.0)
    cmean = tl.load(PM + row * P + ps, mask=pm, other=0.0)
    cm2 = tl.load(PQ + row * P + ps, mask=pm, other=0.0)
    total = tl.sum(cn, axis=0)
    mean = tl.sum(cn * cmean, axis=0) / total
    dm = tl.where(pm, cmean - mean, 0.0)
    var = (tl.sum(cm2, axis=0) + tl.sum(cn * dm * dm, axis=0)) / total
    rstd = 1.0 / tl.sqrt(var + eps)
    c0 = (row % G) * CG                        # the group's first channel
    base = row.to(tl.int64) * S
    start = part * CHUNK
    for off in range(0, CHUNK, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        m = idx < S
        c = c0 + idx // HW
        x = tl.load(X + base + idx, mask=m, other=0.0).to(tl.float32)
        w = tl.load(W + c, mask=m, other=0.0)
        b = tl.load(B + c, mask=m, other=0.0)
        y = (x - mean) * rstd * w + b
        if SILU:
            y = y / (1.0 + tl.exp(-y))
        tl.store(Y + base + idx, y.to(Y.dtype.element_ty), mask=m)


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               silu: bool = False) -> torch.Tensor:
    """x (N, C, *spatial), contiguous; weight, bias (C,). Returns y like x (same dtype), silu(y) when asked."""
    if x.dim() < 2 or not x.is_contiguous():
        raise ValueError("group_norm: x must be a contiguous (N, C, ...) tensor")
    N, C = x.shape[:2]
    if C % num_groups:
        raise ValueError(f"group_norm: {C} channels do not split into {num_groups} groups")
    hw = x[0, 0].numel()
    S = (C // num_groups) * hw                 # a (sample, group) row: contiguous in NCHW
    R = N * num_groups
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    P = triton.cdiv(S, CHUNK)
    part = torch.empty(3, R, P, dtype=torch.float32, device=x.device)
    _gn_partial_kernel[(R, P)](x, part[0], part[1], part[2], S, P, CHUNK=CHUNK, BLOCK=BLOCK, num_warps=8)
    _gn_apply_kernel[(R, P)](x, y, weight.float().contiguous(), bias.float().contiguous(), part[0], part[1], part[2],
                             S, P, hw, C // num_groups, num_groups, eps, SILU=silu, CHUNK=CHUNK, BLOCK=BLOCK,
                             BLOCK_P=max(16, triton.next_power_of_2(P)), num_warps=8)
    return y
