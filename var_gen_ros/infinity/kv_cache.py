"""KV cache across scales for next-scale prediction.

Scale s attends to every token of scales 0..s. The cache is allocated once for the whole
generation (no re-allocation per scale, unlike upstream's torch.cat) and holds only the scales a
later scale reads: the last scale's K/V are used for its own attention and never stored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class KVCache:
    """Dense K/V in a float dtype: (B, H, capacity, c) for keys and values."""

    # all its state is in tensors at fixed addresses: a CUDA graph of a scale may replay its reads
    # and writes (graphs.py)
    graph_safe = True

    def __init__(self, batch: int, heads: int, head_dim: int, capacity: int, dtype: torch.dtype, device, layer: int = 0,
                 alloc=None):
        # alloc(shape, dtype) -> tensor: where the K/V storage comes from (default: a new tensor on device;
        # the generator may carve every layer's from one block, see Generator._new_caches)
        alloc = alloc or (lambda shape, dt: torch.empty(shape, dtype=dt, device=device))
        self.k = alloc((batch, heads, capacity, head_dim), dtype)
        self.v = alloc((batch, heads, capacity, head_dim), dtype)
        self.length = 0

    def tensors(self):
        """Every tensor its attention reads or writes (a graph captured with it needs them in place)."""
        return [self.k, self.v]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def store(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        L = k.shape[2]
        if start + L > self.k.shape[2]:
            raise RuntimeError(f"KV cache overflow: {start + L} > capacity {self.k.shape[2]}")
        self.k[:, :, start:start + L] = k
        self.v[:, :, start:start + L] = v
        self.length = start + L

    def read(self, end: int):
        return self.k[:, :, :end], self.v[:, :, :end]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, store: bool) -> torch.Tensor:
        """Attention of this scale's queries over cached scales [0, start) plus this scale's k, v. q is
        consumed: an implementation may write the output over it (Int8KVCache's kernel does)."""
        L = k.shape[2]
        if store:
            self.store(k, v, start)
            K, V = self.read(start + L)
        else:
            Kc, Vc = self.read(start)
            K = torch.cat([Kc.to(q.dtype), k.to(q.dtype)], dim=2)
            V = torch.cat([Vc.to(q.dtype), v.to(q.dtype)], dim=2)
        return F.scaled_dot_product_attention(q, K.to(q.dtype), V.to(q.dtype), scale=1.0)
