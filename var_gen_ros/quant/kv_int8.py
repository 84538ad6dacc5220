"""INT8 asymmetric per-channel KV cache.

Keys and values of one layer are quantized per (head, channel) with a scale and a zero point:
    q = clamp(round(x / s) + z, -128, 127),   x̂ = (q - z) · s,   s = (max - min) / 255,
    z = -128 - round(min / s).
Why asymmetric per channel: the cached K/V of Infinity have channels whose ranges differ by an
order of magnitude and whose distributions are skewed (see `var-gen diagnose`), so one symmetric
range per tensor wastes most of the 256 codes on most channels.

Two ways to get (s, z):
- static: from calibration (min/max per channel over the calibration prompts), fixed per layer.
  Kernel-friendly: per-channel K scales fold into the query and the K zero point adds the same
  constant to every logit of a row (softmax ignores it); V's scale/zero apply once to the output.
- dynamic: from each stored scale's own min/max (one (s, z) per channel per stored scale); no
  calibration and no clipping, a few extra bytes per scale.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..infinity.kv_cache import KVCache
from .dispatch import int8_attention_kernel, int8_attention_sdpa, int8_kv_store_kernel


def asym_params(lo: torch.Tensor, hi: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel min/max -> (scale, zero point), float32. A constant channel gets a tiny scale."""
    lo, hi = lo.float(), hi.float()
    s = ((hi - lo) / 255.0).clamp_min(1e-8)
    z = -128.0 - torch.round(lo / s)
    return s, z


def quantize_asym(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (torch.round(x.float() / s) + z).clamp(-128, 127).to(torch.int8)


def dequantize_asym(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (q.float() - z) * s


class Int8KVCache(KVCache):
    """K/V stored as int8 (B, H, capacity, c) with per-(head, channel) scale and zero point.

    `static`: dict with k_scale, k_zero, v_scale, v_zero each (H, c) float32, or None for dynamic."""

    def __init__(self, batch: int, heads: int, head_dim: int, capacity: int, dtype: torch.dtype, device,
                 static: Optional[dict] = None, alloc=None):
        alloc = alloc or (lambda shape, dt: torch.empty(shape, dtype=dt, device=device))     # as KVCache's
        self.k = alloc((batch, heads, capacity, head_dim), torch.int8)
        self.v = alloc((batch, heads, capacity, head_dim), torch.int8)
        self.length = 0
        self.out_dtype = dtype
        self.static = None if static is None else {n: t.to(device=device, dtype=torch.float32).view(1, heads, 1, head_dim)
                                                      for n, t in static.items()}
        # dynamic: one (start, end, k_s, k_z, v_s, v_z) per stored scale
        self.chunks: List[tuple] = []

    def tensors(self):
        return [self.k, self.v] + ([] if self.static is None else list(self.static.values()))

    @property
    def graph_safe(self) -> bool:
        """Static scales only: the dynamic cache keeps each stored scale's (s, z) in a Python list."""
        return self.static is not None

    @property
    def nbytes(self) -> int:
        n = self.k.numel() + self.v.numel()
        if self.static is not None:
            n += sum(t.numel() * 4 for t in self.static.values())
        else:
            n += sum(t.numel() * 4 for c in self.chunks for t in c[2:])
        return n

    def store(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        L = k.shape[2]
        if start + L > self.k.shape[2]:
            raise RuntimeError(f"KV cache overflow: {start + L} > capacity {self.k.shape[2]}")
        if self.static is not None:
            st = self.static
            ks, kz, vs, vz = st["k_scale"], st["k_zero"], st["v_scale"], st["v_zero"]
            fn = int8_kv_store_kernel(k)
            if fn is not None:       # the same codes in one launch (kernels/int8_kv_attention_triton.py)
                fn(k, v, self.k, self.v, start, ks, kz, vs, vz)
                self.length = start + L
                return
        else:
            ks, kz = asym_params(k.float().amin((0, 2), keepdim=True), k.float().amax((0, 2), keepdim=True))
            vs, vz = asym_params(v.float().amin((0, 2), keepdim=True), v.float().amax((0, 2), keepdim=True))
            self.chunks = [c for c in self.chunks if c[1] <= start] + [(start, start + L, ks, kz, vs, vz)]
        self.k[:, :, start:start + L] = quantize_asym(k, ks, kz)
        self.v[:, :, start:start + L] = quantize_asym(v, vs, vz)
        self.length = start + L

    def read(self, end: int):
        """Dequantized K, V of tokens [0, end) in float32."""
        if self.static is not None:
            st = self.static
            return (dequantize_asym(self.k[:, :, :end], st["k_scale"], st["k_zero"]),
                    dequantize_asym(self.v[:, :, :end], st["v_scale"], st["v_zero"]))
        ks, vs = [], []
        for a, b, k_s, k_z, v_s, v_z in self.chunks:
            if a >= end:
                break
            b = min(b, end)
            ks.append(dequantize_asym(self.k[:, :, a:b], k_s, k_z))
            vs.append(dequantize_asym(self.v[:, :, a:b], v_s, v_z))
        if not ks:
            shape = (self.k.shape[0], self.k.shape[1], 0, self.k.shape[3])
            return self.k.new_zeros(shape, dtype=torch.float32), self.v.new_zeros(shape, dtype=torch.float32)
        return torch.cat(ks, 2), torch.cat(vs, 2)

    def attend(self, q, k, v, start, store):
        """With static scales on a GPU: the INT8-KV attention kernel (dequantizes in registers).
        Otherwise KVCache's reference: stored K/V are read back dequantized and SDPA runs on them.
        Either way the last scale's own K/V, which are never stored, take part at full precision.
        Inside a CUDA graph, from `dispatch.KV_SDPA_MIN_LQ` queries on, each group of heads' K/V is
        dequantized into a bounded bf16 buffer and SDPA runs on it instead (faster there on Hopper:
        cuDNN's fused attention; eagerly its host time outweighs that).
        Both write the output over q (the kernel's programs read their query block before writing it;
        the SDPA path a head group's queries): q is consumed, and the largest scale holds one
        (B, H, L, c) tensor fewer."""
        if self.static is not None:
            # many queries in a CUDA graph: each head group's K/V dequantized into a bounded buffer, then SDPA
            fn = int8_attention_sdpa(q, start + k.shape[2]) or int8_attention_kernel(q)
            if fn is not None:
                st = self.static
                L = k.shape[2]
                out = q if q.is_contiguous() else None
                if store:
                    self.store(k, v, start)
                    return fn(q, self.k, self.v, start + L, st["k_scale"], st["k_zero"], st["v_scale"], st["v_zero"],
                              out=out)
                return fn(q, self.k, self.v, start, st["k_scale"], st["k_zero"], st["v_scale"], st["v_zero"], k, v,
                          out=out)
        return super().attend(q, k, v, start, store)


def symmetric_per_tensor_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """The baseline the asymmetric per-channel scheme is measured against: one scale amax/127."""
    s = x.float().abs().amax().clamp_min(1e-8) / 127.0
    return (x.float() / s).round().clamp(-127, 127) * s


class KVStatsRecorder(KVCache):
    """A float KV cache that also accumulates per-(head, channel) statistics of what it stores:
    min, max, and raw moments for mean / std / skewness (calibration and diagnostics)."""

    graph_safe = False      # its statistics live in Python dicts, which a graph replay would not update

    def __init__(self, batch, heads, head_dim, capacity, dtype, device, stats: dict):
        super().__init__(batch, heads, head_dim, capacity, dtype, device)
        self.stats = stats

    def store(self, k, v, start):
        super().store(k, v, start)
        for name, t in (("k", k), ("v", v)):
            x = t.detach().double()
            s = self.stats.setdefault(name, {})
            lo, hi = x.amin((0, 2)), x.amax((0, 2))
            s["min"] = lo if "min" not in s else torch.minimum(s["min"], lo)
            s["max"] = hi if "max" not in s else torch.maximum(s["max"], hi)
            for p in (1, 2, 3):
                m = x.pow(p).sum((0, 2))
                s[f"m{p}"] = m if f"m{p}" not in s else s[f"m{p}"] + m
            s["n"] = s.get("n", 0) + x.shape[0] * x.shape[2]


def channel_stats(s: dict) -> dict:
    """From a KVStatsRecorder entry: per-channel mean, std, skewness and absmax (H, c), float64.

    Reported numbers: `cv` = coefficient of variation across channels of the per-channel absmax
    (how unequal channel ranges are), `skewness` = mean over channels of the per-channel skewness."""
    n = s["n"]
    m1, m2, m3 = s["m1"] / n, s["m2"] / n, s["m3"] / n
    var = (m2 - m1 ** 2).clamp_min(1e-30)
    std = var.sqrt()
    skew = (m3 - 3 * m1 * m2 + 2 * m1 ** 3) / std ** 3
    absmax = torch.maximum(s["max"].abs(), s["min"].abs())
    return {"mean": m1, "std": std, "skew": skew, "absmax": absmax,
            "cv": float(absmax.std() / absmax.mean().clamp_min(1e-30)), "skewness": float(skew.mean()),
            "abs_skewness": float(skew.abs().mean())}
