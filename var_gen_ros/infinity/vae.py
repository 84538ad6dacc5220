"""BSQ-VAE: flux-style convolutional autoencoder with a multi-scale binary spherical quantizer.

Names follow the official `AutoEncoder` (infinity/models/bsq_vae/flux_vqgan.py) state dict: convs
are wrapped (`*.conv.weight`), group norms too (`*.norm.weight`), and the quantizer keeps its bit
mask buffer (`quantizer.lfq.mask`). Flat keys of older checkpoints (`encoder.conv_in.weight`) are
mapped by `checkpoint.load_vae_state_dict`.
"""
from __future__ import annotations

import math
import os
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VAEConfig


class Conv(nn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding)

    def forward(self, x):
        return self.conv(x)


class Normalize(nn.Module):
    def __init__(self, ch):
        super().__init__()
        groups = 32 if ch % 32 == 0 else 24 if ch % 24 == 0 else None
        if groups is None:
            raise ValueError(f"GroupNorm needs channels divisible by 32 or 24, got {ch}")
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6, affine=True)

    def forward(self, x, silu: bool = False, inplace: bool = False):
        """GroupNorm, then SiLU when `silu` (in place on the norm's output when `inplace`). Without autograd on a
        GPU one kernel (kernels/group_norm_triton.py): PyTorch's GroupNorm runs one thread block per (image, group),
        32 at a 1024² decode, and took over half of it on the H100."""
        fn = None if torch.is_grad_enabled() else _group_norm_kernel(x)
        if fn is not None and (x.is_contiguous() or x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
            n = self.norm
            return fn(x, n.num_groups, n.weight, n.bias, n.eps, silu)
        y = self.norm(x)
        return F.silu(y, inplace=inplace) if silu else y


def _group_norm_kernel(x):
    from ..quant.dispatch import group_norm_kernel     # (lazy: quant imports this package)
    return group_norm_kernel(x)


class ResnetBlock(nn.Module):
    in_place = True          # False: the out-of-place ops (same numbers; the memory test compares both)

    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = Normalize(cin), Conv(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = Normalize(cout), Conv(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = Conv(cin, cout, 1)

    def forward(self, x):
        # without autograd, SiLU and the residual add run in place on tensors this block made: the same
        # numbers, one full-resolution activation less at a time (the 1024² decode's peak is its top level)
        free = self.in_place and not torch.is_grad_enabled()
        h = self.conv1(self.norm1(x, silu=True, inplace=free))
        h = self.conv2(self.norm2(h, silu=True, inplace=free))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return h.add_(skip) if free else skip + h


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = Conv(ch, ch, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = Conv(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        n_down = int(math.log2(c.patch_size))
        self.conv_in = Conv(c.in_channels, c.base_ch, 3, padding=1)
        in_mult = (1,) + tuple(c.ch_mult)
        self.down = nn.ModuleList()
        for i, mult in enumerate(c.ch_mult):
            level = nn.Module()
            cin, cout = c.base_ch * in_mult[i], c.base_ch * mult
            level.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(c.num_res_blocks))
            level.attn = nn.ModuleList()
            if i < n_down:
                level.downsample = Downsample(cout)
            self.down.append(level)
        ch = c.base_ch * c.ch_mult[-1]
        self.mid = nn.Module()
        self.mid.block_1, self.mid.block_2 = ResnetBlock(ch, ch), ResnetBlock(ch, ch)
        self.norm_out = Normalize(ch)
        self.conv_out = Conv(ch, c.codebook_dim, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for blk in level.block:
                h = blk(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.block_1(h))
        return self.conv_out(self.norm_out(h, silu=True))


# The decoder's activations channels-last (NHWC) on a GPU: cuDNN's convolutions run NHWC, so the NCHW <-> NHWC copies
# around each of them go (8.85 ms of the 8B decoder's 36 ms at 1024² on the H100, thirty-second session); the
# GroupNorm kernel has an NHWC form. The weights may stay NCHW (an offloaded VAE's are): each convolution then takes an
# NHWC copy of its weight (<= 4.7 MB at a time). Timed on the H100 in the thirty-seventh session (its GPU tests pass):
# the 1024² decode 36.33 -> 35.25 ms (34.82 with channels-last weights), 1.1-1.5 ms of the copies' 8.85 back, 0.1 % of
# a generation and not checked on the Orin, so off: VAR_GEN_VAE_CHANNELS_LAST=1 turns it on.
CHANNELS_LAST = os.environ.get("VAR_GEN_VAE_CHANNELS_LAST", "0") == "1"


class Decoder(nn.Module):
    channels_last = None     # None: CHANNELS_LAST on a GPU; True / False: always / never (tests, benchmarks)

    def __init__(self, c: VAEConfig):
        super().__init__()
        n_up = int(math.log2(c.patch_size))
        ch = c.base_ch * c.ch_mult[-1]
        self.conv_in = Conv(c.codebook_dim, ch, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.block_2 = ResnetBlock(ch, ch), ResnetBlock(ch, ch)
        levels = []
        for i in reversed(range(len(c.ch_mult))):
            level = nn.Module()
            cout = c.base_ch * c.ch_mult[i]
            level.block = nn.ModuleList(ResnetBlock(ch if j == 0 else cout, cout) for j in range(c.num_res_blocks + 1))
            ch = cout
            level.attn = nn.ModuleList()
            if 1 <= i <= n_up:
                level.upsample = Upsample(cout)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(ch)
        self.conv_out = Conv(ch, c.in_channels, 3, padding=1)

    def forward(self, z):
        if (CHANNELS_LAST and z.is_cuda if self.channels_last is None else self.channels_last) and z.dim() == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        h = self.mid.block_2(self.mid.block_1(self.conv_in(z)))
        for level in reversed(self.up):
            for blk in level.block:
                h = blk(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(self.norm_out(h, silu=True, inplace=not torch.is_grad_enabled()))


class BSQ(nn.Module):
    """Binary spherical quantization of one scale: sign of the L2-normalised code, scaled to the
    unit sphere (each entry +-1/sqrt(d))."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("mask", 2 ** torch.arange(dim - 1, -1, -1))

    def quantize(self, z: torch.Tensor):
        """z (B, d, h, w) -> (codes with a straight-through gradient, bits (B, h, w, d))."""
        zn = F.normalize(z.float(), dim=1)
        q = torch.where(zn > 0, 1.0, -1.0) / math.sqrt(self.dim)
        bits = (q > 0).permute(0, 2, 3, 1).to(torch.uint8)
        return zn + (q - zn).detach(), bits


class MultiScaleBSQ(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.lfq = BSQ(dim)

    def forward(self, z: torch.Tensor, scales: Sequence[Tuple[int, int]]):
        """Residual quantization over scales. Returns the summed codes at z's size and bits per scale."""
        H, W = z.shape[-2:]
        residual, out, bits = z.float(), torch.zeros_like(z, dtype=torch.float32), []
        for (h, w) in scales:
            r = residual if (h, w) == (H, W) else F.interpolate(residual, size=(h, w), mode="area")
            q, b = self.lfq.quantize(r)
            q = q if (h, w) == (H, W) else upsample_codes(q, (H, W))
            residual = residual - q.detach()
            out = out + q
            bits.append(b)
        return out, bits


def upsample_codes(codes: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """The official z_interplote_up ('trilinear' over a one-frame volume) == bilinear, no corners."""
    return F.interpolate(codes, size=size, mode="bilinear", align_corners=False)


class BSQVAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = MultiScaleBSQ(cfg.codebook_dim)

    def encode(self, img: torch.Tensor, scales: Sequence[Tuple[int, int]]):
        """img (B, 3, H, W) in [-1, 1] -> (summed codes (B, d, h, w), bit labels per scale)."""
        return self.quantizer(self.encoder(img), scales)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        dt = self.decoder.conv_in.conv.weight.dtype
        return self.decoder(codes.to(dt)).clamp(-1, 1)


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, RGB."""
    return ((img.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
