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

Channels-last (N, *spatial, C in memory; `torch.channels_last`) activations, which let cuDNN's convolutions skip their
NCHW <-> NHWC copies (8.85 ms of the 1024² decode, thirty-second session), have their own three kernels: a program
takes a run of pixels with all their channels (one contiguous stretch of memory) and keeps every group's statistics
at once; `_gn_nhwc_finish_kernel` merges each (image, group)'s partials into its mean and 1/std; the apply pass
reads those and writes y in the same layout.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 2048            # elements per tile
CHUNK = 16 * BLOCK      # elements of a row per program (a row of 4 M elements: 128 programs)


@triton.jit
def _chan_merge(cnt, mean, m2, nb, bmean, bm2):
    """(count, mean, sum of squared deviations) merged with a block's (nb, bmean, bm2): Chan's formula, no
    cancellation of E[x²] - E[x]². A block of nb = 0 changes nothing."""
    tot = cnt + nb
    frac = nb / tl.maximum(tot, 1.0)
    delta = bmean - mean
    return tot, mean + delta * frac, m2 + bm2 + delta * delta * cnt * frac


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
        n, mean, m2 = _chan_merge(n, mean, m2, nb, tmean, tl.sum(d * d, axis=0))
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


@triton.jit
def _gn_nhwc_tile(X, n, p0, HW, C, G, CG, BLOCK_PIX: tl.constexpr, G_PAD: tl.constexpr, CG_PAD: tl.constexpr):
    """Offsets (BLOCK_PIX, G_PAD, CG_PAD) of image n's pixels p0.. in NHWC memory (pixel, group, channel in the
    group), and their mask."""
    px = p0 + tl.arange(0, BLOCK_PIX)
    g = tl.arange(0, G_PAD)
    c = tl.arange(0, CG_PAD)
    ch = g[None, :, None] * CG + c[None, None, :]
    offs = n.to(tl.int64) * HW * C + px[:, None, None].to(tl.int64) * C + ch
    m = (px[:, None, None] < HW) & (g[None, :, None] < G) & (c[None, None, :] < CG)
    return offs, m


@triton.jit
def _gn_nhwc_partial_kernel(X, PN, PM, PQ, HW, C, G, CG, P, PIX_CHUNK: tl.constexpr, BLOCK_PIX: tl.constexpr,
                            G_PAD: tl.constexpr, CG_PAD: tl.constexpr):
    """Per (image, group): the count, mean and sum of squared deviations of this program's pixels (Chan's merge over
    its tiles), stored at [(n · G + g) · P + part]."""
    n = tl.program_id(0)
    part = tl.program_id(1)
    cnt = tl.zeros((G_PAD,), dtype=tl.float32)
    mean = tl.zeros((G_PAD,), dtype=tl.float32)
    m2 = tl.zeros((G_PAD,), dtype=tl.float32)
    for off in range(0, PIX_CHUNK, BLOCK_PIX):
        p0 = part * PIX_CHUNK + off
        offs, m = _gn_nhwc_tile(X, n, p0, HW, C, G, CG, BLOCK_PIX, G_PAD, CG_PAD)
        x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
        nb = (tl.minimum(HW - p0, BLOCK_PIX) * CG).to(tl.float32)    # the same for every group (<= 0 past the end)
        nb = tl.maximum(nb, 0.0)
        tmean = tl.sum(tl.sum(x, axis=2), axis=0) / tl.maximum(nb, 1.0)
        d = tl.where(m, x - tmean[None, :, None], 0.0)
        cnt, mean, m2 = _chan_merge(cnt, mean, m2, nb, tmean, tl.sum(tl.sum(d * d, axis=2), axis=0))
    g = tl.arange(0, G_PAD)
    at = (n * G + g) * P + part
    tl.store(PN + at, cnt, mask=g < G)
    tl.store(PM + at, mean, mask=g < G)
    tl.store(PQ + at, m2, mask=g < G)


@triton.jit
def _gn_nhwc_finish_kernel(PN, PM, PQ, MEAN, RSTD, P, eps, BLOCK_P: tl.constexpr):
    """One (image, group) row: its P partials merged (Chan's formula, BLOCK_P at a time) into the mean and 1/std."""
    row = tl.program_id(0)
    cnt = 0.0
    mean = 0.0
    m2 = 0.0
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        pm = ps < P
        cn = tl.load(PN + row * P + ps, mask=pm, other=0.0)
        cmean = tl.load(PM + row * P + ps, mask=pm, other=0.0)
        cm2 = tl.load(PQ + row * P + ps, mask=pm, other=0.0)
        nb = tl.sum(cn, axis=0)
        bmean = tl.sum(cn * cmean, axis=0) / tl.maximum(nb, 1.0)
        dm = tl.where(pm, cmean - bmean, 0.0)
        cnt, mean, m2 = _chan_merge(cnt, mean, m2, nb, bmean, tl.sum(cm2, axis=0) + tl.sum(cn * dm * dm, axis=0))
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, 1.0 / tl.sqrt(m2 / cnt + eps))


@triton.jit
def _gn_nhwc_apply_kernel(X, Y, W, B, MEAN, RSTD, HW, C, G, CG, SILU: tl.constexpr, PIX_CHUNK: tl.constexpr,
                          BLOCK_PIX: tl.constexpr, G_PAD: tl.constexpr, CG_PAD: tl.constexpr):
    n = tl.program_id(0)
    part = tl.program_id(1)
    # per channel, once: y = x · scale + shift, scale = w / std of its group, shift = b - mean · scale
    g = tl.arange(0, G_PAD)
    c = tl.arange(0, CG_PAD)
    ch = g[None, :, None] * CG + c[None, None, :]
    cm = (g[None, :, None] < G) & (c[None, None, :] < CG)
    mean = tl.load(MEAN + n * G + g, mask=g < G, other=0.0)
    rstd = tl.load(RSTD + n * G + g, mask=g < G, other=0.0)
    scale = tl.load(W + ch, mask=cm, other=0.0) * rstd[None, :, None]
    shift = tl.load(B + ch, mask=cm, other=0.0) - mean[None, :, None] * scale
    for off in range(0, PIX_CHUNK, BLOCK_PIX):
        offs, m = _gn_nhwc_tile(X, n, part * PIX_CHUNK + off, HW, C, G, CG, BLOCK_PIX, G_PAD, CG_PAD)
        y = tl.load(X + offs, mask=m, other=0.0).to(tl.float32) * scale + shift
        if SILU:
            y = y / (1.0 + tl.exp(-y))
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=m)


NHWC_TILE = 2048        # elements per tile (a run of pixels with all their channels, padded per group)
NHWC_TILES = 16         # tiles per program
NHWC_FINISH_BLOCK = 1024  # partials merged at a time


def _group_norm_nhwc(x, num_groups, weight, bias, eps, silu):
    N, C = x.shape[:2]
    hw = x[0, 0].numel()
    G, CG = num_groups, C // num_groups
    y = torch.empty_like(x)                    # (channels-last, as x)
    g_pad, cg_pad = triton.next_power_of_2(G), triton.next_power_of_2(CG)
    block_pix = max(1, NHWC_TILE // (g_pad * cg_pad))
    chunk = block_pix * NHWC_TILES
    P = triton.cdiv(hw, chunk)
    part = torch.empty(3, N * G, P, dtype=torch.float32, device=x.device)
    stats = torch.empty(2, N * G, dtype=torch.float32, device=x.device)
    meta = dict(PIX_CHUNK=chunk, BLOCK_PIX=block_pix, G_PAD=g_pad, CG_PAD=cg_pad, num_warps=8)
    _gn_nhwc_partial_kernel[(N, P)](x, part[0], part[1], part[2], hw, C, G, CG, P, **meta)
    _gn_nhwc_finish_kernel[(N * G,)](part[0], part[1], part[2], stats[0], stats[1], P, eps,
                                     BLOCK_P=NHWC_FINISH_BLOCK, num_warps=4)
    _gn_nhwc_apply_kernel[(N, P)](x, y, weight.float().contiguous(), bias.float().contiguous(), stats[0], stats[1],
                                  hw, C, G, CG, SILU=silu, **meta)
    return y


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               silu: bool = False) -> torch.Tensor:
    """x (N, C, *spatial), contiguous, or (N, C, H, W) channels-last; weight, bias (C,). Returns y like x (same dtype
    and memory layout), silu(y) when asked."""
    if x.dim() < 2:
        raise ValueError("group_norm: x must be an (N, C, ...) tensor")
    N, C = x.shape[:2]
    if C % num_groups:
        raise ValueError(f"group_norm: {C} channels do not split into {num_groups} groups")
    if not x.is_contiguous():
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return _group_norm_nhwc(x, num_groups, weight, bias, eps, silu) if x.numel() else torch.empty_like(x)
        raise ValueError("group_norm: x must be a contiguous (N, C, ...) or a channels-last (N, C, H, W) tensor")
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
