"""Weight-only INT4 linear layers (asymmetric, one scale and one offset per 64 inputs of each output
channel) and an INT8 embedding table, for the text encoder.

Why: on a 16 GB Jetson the T5-XL encoder is the largest thing after the transformer's weights and the
KV caches, and it runs once per new prompt on a few dozen tokens, so its bytes matter and its speed
hardly does. INT8 weights (int8_weight.py) hold it in 1.33 GiB; INT4 in 64-wide groups, with the token
embedding table in INT8 per row, in 0.67 GiB. Asymmetric groups (w ≈ q·s + m, q in 0..15) use all
16 codes on a group's actual range, where a symmetric grid spends one code and half of another on a
sign the group's values may not need; a float offset (not an integer zero point) keeps the group's
minimum exact. The forward dequantizes one layer at a time (a transient of one layer's 16-bit weight).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dispatch import int4_dequant_kernel

GROUP = 64
# the forward's dequantization through the kernel where there is one (a benchmark's side-by-side switch)
DEQUANT_KERNEL = True


def group_size(in_features: int, group: int = GROUP) -> int:
    """The largest power-of-two divisor of in_features up to `group` (64 for every T5 width)."""
    g = group
    while in_features % g:
        g //= 2
    return g


class Int4WeightLinear(nn.Module):
    """y = x · dequant(W)ᵀ + b with W stored as 4-bit codes, two per byte (even input index in the low
    nibble), and a float16 scale and offset per group of `group` inputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype=torch.bfloat16, device=None,
                 group: int = GROUP):
        super().__init__()
        if in_features % 2:
            raise ValueError(f"Int4WeightLinear needs an even in_features, not {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.group = group_size(in_features, group)
        ng = in_features // self.group
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, ng, dtype=torch.float16, device=device))
        self.register_buffer("weight_offset", torch.zeros(out_features, ng, dtype=torch.float16, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @property
    def weight(self) -> torch.Tensor:
        # transformers' T5 feed-forward casts its input to `wo.weight.dtype` unless that is int8 (its own
        # quantized layers); an int8 view of the packed codes keeps the activations in their dtype
        return self.weight_packed.view(torch.int8)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, lin: nn.Linear, group: int = GROUP) -> "Int4WeightLinear":
        q = cls(lin.in_features, lin.out_features, lin.bias is not None, lin.weight.dtype, lin.weight.device, group)
        w = lin.weight.detach().float().view(lin.out_features, -1, q.group)
        codes, s, m = quantize_groups(w)
        q.weight_packed.copy_(pack_int4(codes.view(lin.out_features, -1)))
        q.weight_scale.copy_(s)
        q.weight_offset.copy_(m)
        if lin.bias is not None:
            q.bias.copy_(lin.bias.detach())
        return q

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        codes = unpack_int4(self.weight_packed).view(self.out_features, -1, self.group).to(dtype)
        w = codes * self.weight_scale.to(dtype)[..., None] + self.weight_offset.to(dtype)[..., None]
        return w.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # dequantized in float32 and rounded once to the activations' dtype (a bf16 q·s + m would round twice);
        # on a GPU in one kernel (kernels/int4_dequant_triton.py, the same bits) instead of ~10 PyTorch ops
        kernel = int4_dequant_kernel(self.weight_packed) if DEQUANT_KERNEL else None
        if kernel is not None:
            w = kernel(self.weight_packed, self.weight_scale, self.weight_offset, self.group, x.dtype)
        else:
            w = self.dequantized(torch.float32).to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, int4 weights (groups of {self.group})"


# Each group's range is shrunk toward its middle by the factor of these that leaves the least squared error
# (the weights outside it clip): a group's extreme weight sets the grid for all 64, and giving up a little of
# it makes the other 63 finer. 1.0 first, so a tie keeps the full range.
SHRINKS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
FP16_TINY, FP16_MAX = 2.0 ** -14, 65504.0


def quantize_groups(w: torch.Tensor, shrinks=None):
    """(rows, groups, g) float32 -> codes uint8 0..15, scale and offset float16 (rows, groups), the range
    per group chosen among `shrinks` by squared error. The float16-rounded scale and offset are those the
    codes are computed against, so the error left is the codes' rounding and the clipping."""
    shrinks = SHRINKS if shrinks is None else shrinks
    if w.numel() and w.device.type != "meta" and not bool(w.abs().max() <= FP16_MAX):     # NaN / inf too
        raise ValueError(f"weights outside float16's range (max |w| {w.abs().max().item():.3g}) cannot take "
                         f"float16 group offsets; keep this model's text encoder in int8 or bf16")
    lo, hi = w.amin(-1), w.amax(-1)
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    best = None
    for f in shrinks:
        a, b = mid - f * half, mid + f * half
        # at least float16's smallest normal number: a constant group (range 0) gets codes 0 and its value
        # as the offset, instead of a zero scale
        s = ((b - a) / 15.0).clamp_min(FP16_TINY).to(torch.float16)
        m = a.to(torch.float16)
        sf, mf = s.float()[..., None], m.float()[..., None]
        c = torch.round((w - mf) / sf).clamp(0, 15)
        err = (c * sf + mf - w).square().sum(-1)
        if best is None:
            best = [err, c.to(torch.uint8), s, m]
            continue
        better = err < best[0]
        best[0] = torch.where(better, err, best[0])
        best[1] = torch.where(better[..., None], c.to(torch.uint8), best[1])
        best[2] = torch.where(better, s, best[2])
        best[3] = torch.where(better, m, best[3])
    return best[1], best[2], best[3]


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """(..., 2n) uint8 codes 0..15 -> (..., n) bytes, the even index in the low nibble."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """pack_int4's inverse: (..., n) bytes -> (..., 2n) codes 0..15."""
    return torch.stack((packed & 15, packed >> 4), -1).flatten(-2)


class Int8Embedding(nn.Module):
    """A token embedding table in INT8, one symmetric scale per row (per token): a lookup dequantizes
    only the rows it gathers."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=torch.bfloat16, device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.out_dtype = num_embeddings, embedding_dim, dtype
        self.register_buffer("weight_q", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, dtype=torch.float32, device=device))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_q

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, emb: nn.Embedding) -> "Int8Embedding":
        w = emb.weight.detach().float()
        q = cls(emb.num_embeddings, emb.embedding_dim, emb.weight.dtype, emb.weight.device)
        s = (w.abs().amax(1) / 127.0).clamp_min(1e-12)
        q.weight_q.copy_(torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8))
        q.weight_scale.copy_(s)
        return q

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.weight_q[ids].float() * self.weight_scale[ids][..., None]).to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


def quantize_int4_weights_(module: nn.Module, group: int = GROUP) -> int:
    """Replace every nn.Linear inside `module` by Int4WeightLinear, in place; returns how many."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, Int4WeightLinear.from_linear(child, group))
            n += 1
        else:
            n += quantize_int4_weights_(child, group)
    return n


def quantize_t5_embedding_(t5_model: nn.Module) -> int:
    """A transformers T5EncoderModel's token tables in INT8 per row: its encoder's `embed_tokens` (the one
    its forward reads) and the model's `shared`, one module for both when they share their weight (tied,
    as loaded from a checkpoint). Returns how many tables were replaced (0: none found)."""
    enc = getattr(t5_model, "encoder", None)
    tables = [(enc, "embed_tokens"), (t5_model, "shared")]
    done, n = {}, 0
    for owner, name in tables:
        emb = getattr(owner, name, None) if owner is not None else None
        if not isinstance(emb, nn.Embedding):
            continue
        key = emb.weight.untyped_storage().data_ptr()
        if key not in done:
            done[key] = Int8Embedding.from_embedding(emb)
        setattr(owner, name, done[key])
        n += 1
    return n
