"""Weight-only INT8 linear layers (symmetric, one scale per output channel) for the text encoder.

The T5-XL encoder runs once per prompt on a handful of tokens, so its speed hardly matters but its
2.4 GB of bf16 weights do on a 16 GB device: INT8 halves them. The forward dequantizes one layer's
weight at a time (a transient of one layer, at most 2048 x 5120 for T5-XL)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Int8WeightLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, dtype=torch.bfloat16, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @property
    def weight(self) -> torch.Tensor:
        # transformers' T5 feed-forward reads `wo.weight.dtype` to pick its compute dtype and leaves
        # int8 weights alone, as for its own int8 layers
        return self.weight_q

    @classmethod
    @torch.no_grad()
    def from_linear(cls, lin: nn.Linear) -> "Int8WeightLinear":
        w = lin.weight.detach().float()
        q = cls(lin.in_features, lin.out_features, lin.bias is not None, lin.weight.dtype, lin.weight.device)
        s = (w.abs().amax(1) / 127.0).clamp_min(1e-12)
        q.weight_q.copy_(torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8))
        q.weight_scale.copy_(s)
        if lin.bias is not None:
            q.bias.copy_(lin.bias.detach())
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight_q.to(torch.float32) * self.weight_scale[:, None]).to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, int8 weights"


def quantize_int8_weights_(module: nn.Module) -> int:
    """Replace every nn.Linear inside `module` by Int8WeightLinear, in place; returns how many."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8WeightLinear.from_linear(child))
            n += 1
        else:
            n += quantize_int8_weights_(child)
    return n
