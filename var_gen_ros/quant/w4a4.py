"""SVDQuant linear layers (Li et al., "SVDQuant: Absorbing Outliers by Low-Rank Components for
4-Bit Diffusion Models", ICLR 2025), written from the paper.

    y = x W^T + b
      = (x / λ) (W diag λ)^T + b                          smoothing: outliers move into W
      = x̂ L_down L_up^T + x̂ R^T + b                       W diag λ = L_up L_down^T + R  (rank-r SVD)
      ≈ x̂ L_down L_up^T + Q4(x̂) Q4(R)^T + b              R and x̂ in INT4, the branch in 16 bits

λ is searched per layer on calibration activations: λ_j = a_j^α / w_j^(1-α) (a_j, w_j the
per-input-channel absmax of activations and weights), α from a grid, the one with the smallest
output error of the whole quantized layer wins (identity λ is always a candidate).

`W4A4Linear.forward` is the PyTorch reference: every quantized value is dequantized exactly and the
products run in float32, so it equals the integer group dot products the kernels compute up to
float32 rounding. Parameters are stored in 16 bits (`param_dtype`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar

import torch
import torch.nn as nn

from .int4 import dequantize_groups, fake_quant_int4, pack_int4, quantize_groups, unpack_int4, weight_scales, weight_units

DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

T = TypeVar("T")

# the key of a derived value whose layer's weights are offloaded (parking.py): valid for the weights the file holds
_PARKED = "parked"


def _tensor_key(t: torch.Tensor) -> tuple:
    return (t.device, t.data_ptr(), t._version)


class W4A4Linear(nn.Module):
    """A Linear in SVDQuant form. `act_bits=4`: W4A4; `act_bits=None`: W4A16 (weights only)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rank: int = 32, group: int = 64,
                 act_bits: Optional[int] = 4, param_dtype=torch.bfloat16, device=None):
        super().__init__()
        if in_features % group:
            raise ValueError(f"in_features {in_features} is not a multiple of group {group}")
        if act_bits not in (4, None):
            raise ValueError("act_bits must be 4 or None")
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.group, self.act_bits = rank, group, act_bits
        K, N = in_features, out_features
        f = dict(device=device)
        self.register_buffer("qweight", torch.zeros(N, K // 2, dtype=torch.uint8, **f))
        self.register_buffer("wscales", torch.ones(N, K // group, dtype=param_dtype, **f))
        self.register_buffer("smooth", torch.ones(K, dtype=param_dtype, **f))
        self.register_buffer("lora_down", torch.zeros(K, rank, dtype=param_dtype, **f))
        self.register_buffer("lora_up", torch.zeros(N, rank, dtype=param_dtype, **f))
        if bias:
            self.register_buffer("bias", torch.zeros(N, dtype=param_dtype, **f))
        else:
            self.bias = None
        self._derived = {}        # name -> (key of its source tensor, value, source's attribute name)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.wscales.dtype

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        mode = "W4A4" if self.act_bits else "W4A16"
        return f"{self.in_features}->{self.out_features}, {mode}, rank={self.rank}, group={self.group}"

    # -- construction
    @torch.no_grad()
    def set_weights(self, smooth: torch.Tensor, lora_down: torch.Tensor, lora_up: torch.Tensor,
                    residual_q: torch.Tensor, residual_scales: torch.Tensor, bias: Optional[torch.Tensor]):
        self.smooth.copy_(smooth)
        self.lora_down.copy_(lora_down)
        self.lora_up.copy_(lora_up)
        self.qweight.copy_(pack_int4(residual_q))
        self.wscales.copy_(residual_scales)
        if self.bias is not None:
            self.bias.copy_(bias)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, act_absmax: Optional[torch.Tensor] = None,
                    x_sample: Optional[torch.Tensor] = None, rank: int = 32, group: int = 64,
                    act_bits: Optional[int] = 4, alphas: Sequence[float] = DEFAULT_ALPHAS,
                    param_dtype=torch.bfloat16) -> "W4A4Linear":
        """Quantize `linear`. With calibration data (act_absmax over all calibration tokens, x_sample a
        few hundred of those tokens) α is searched; without it no smoothing is applied."""
        W = linear.weight.detach()
        N, K = W.shape
        q = cls(K, N, linear.bias is not None, rank, group, act_bits, param_dtype, device=W.device)
        b = None if linear.bias is None else linear.bias.detach()
        if x_sample is not None:
            cands = smoothing_candidates(W, act_absmax, alphas if act_bits else (), param_dtype)
        elif act_absmax is not None and act_bits:   # ranges known but no tokens to search on
            cands = [(0.5, smoothing_factor(W, act_absmax, 0.5, param_dtype))]
        else:
            cands = [(None, torch.ones(K, dtype=param_dtype, device=W.device))]
        best = None
        for alpha, lam in cands:
            parts = svdquant_decompose(W, lam, rank, group, param_dtype)
            err = 0.0 if len(cands) == 1 else _output_error(W, x_sample, parts, group, act_bits)
            if best is None or err < best[0]:
                best = (err, parts, alpha)
        q.alpha = best[2]   # None = no smoothing won; kept for reports
        q.set_weights(*best[1], bias=b)
        return q

    def weight_units(self) -> Optional[torch.Tensor]:
        """(N,) float32 per-channel units u of the two-level weight scales (every wscale / u an integer
        in [1, 16]: what the INT8 GEMM path needs), or None for free scales. Derived from `wscales`
        once per device and weights version."""
        return self.derived("weight_units", "wscales", lambda: weight_units(self.wscales))

    def derived(self, name: str, source: str, make: Callable[[], T]) -> T:
        """`make()`, a value derived from the layer's tensor `source` (an attribute name), kept on the layer until
        that tensor changes: another tensor (another device) or the same one written in place. The kernels' 1/λ is
        kept here too. Weights offloaded to disk come back as new tensors with the same bits: `weights_parking`
        and `weights_loaded` carry the values over, so a load does not make them again (the weight units alone are
        ~200 small kernels a layer: 41 layers for each new prompt with the text-only layers offloaded)."""
        t = getattr(self, source)
        kept = self._derived.get(name)
        if kept is None or kept[0] != _tensor_key(t):
            kept = self._derived[name] = (_tensor_key(t), make(), source)
        return kept[1]

    def derived_tensors(self) -> list:
        """The kept derived values' tensors (alone or in a tuple): a CUDA graph of this layer reads them at their
        addresses too."""
        out = []
        for _, v, _ in self._derived.values():
            out += [t for t in (v if isinstance(v, tuple) else (v,)) if isinstance(t, torch.Tensor)]
        return out

    def weights_parking(self) -> None:
        """parking.ParkedWeights is about to put meta tensors in: the values derived from the current tensors stay,
        as valid for the weights the file holds; any others go."""
        self._derived = {n: (_PARKED, v, src) for n, (k, v, src) in self._derived.items()
                         if k == _tensor_key(getattr(self, src))}

    def weights_loaded(self) -> None:
        """parking.ParkedWeights put the file's tensors back: the values kept at parking are theirs."""
        self._derived = {n: ((_tensor_key(getattr(self, src)) if k == _PARKED else k), v, src)
                         for n, (k, v, src) in self._derived.items()}

    # -- reference forward
    def dequantized_weight(self) -> torch.Tensor:
        """The INT4 residual R as float32 (N, K)."""
        return dequantize_groups(unpack_int4(self.qweight), self.wscales, self.group)

    # activations forward() can apply to its float32 result before the cast (the FFN's GELU): the GEMM
    # epilogue does it, which saves a pass over, and a buffer of, the M x hidden output
    fused_activations = ("gelu_tanh",)

    def forward(self, x: torch.Tensor, act: Optional[str] = None) -> torch.Tensor:
        if act is not None and act not in self.fused_activations:
            raise ValueError(f"W4A4Linear: unknown activation {act!r}")
        if self.act_bits == 4 and x.is_cuda:
            from .dispatch import w4a4_kernel
            fn = w4a4_kernel(x)
            if fn is not None:
                return fn(x, self, act=act)
        return self.reference_forward(x, act)

    def reference_forward(self, x: torch.Tensor, act: Optional[str] = None) -> torch.Tensor:
        shape = x.shape
        y = svdquant_product(x.reshape(-1, self.in_features), self.smooth, self.lora_down, self.lora_up,
                             self.dequantized_weight(), self.group, self.act_bits)
        if self.bias is not None:
            y = y + self.bias.float()
        if act == "gelu_tanh":
            y = torch.nn.functional.gelu(y, approximate="tanh")
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


def smoothing_factor(W: torch.Tensor, act_absmax: torch.Tensor, alpha: float, dtype) -> torch.Tensor:
    """λ = a^α / w^(1-α), normalised to geometric mean 1 (keeps λ well inside 16-bit range), rounded
    to the storage dtype."""
    a = act_absmax.float().to(W.device).clamp_min(1e-5)
    w = W.float().abs().amax(0).clamp_min(1e-5)
    lam = a.pow(alpha) / w.pow(1 - alpha)
    lam = lam / lam.log().mean().exp()
    return lam.clamp(1e-4, 1e4).to(dtype)


def smoothing_candidates(W: torch.Tensor, act_absmax: Optional[torch.Tensor], alphas: Sequence[float], dtype):
    """(α, λ) pairs: identity (α None) first, then one λ per α."""
    out = [(None, torch.ones(W.shape[1], dtype=dtype, device=W.device))]
    if act_absmax is not None:
        out += [(a, smoothing_factor(W, act_absmax, a, dtype)) for a in alphas]
    return out


def _svd_lowrank_factors(Wh: torch.Tensor, rank: int):
    """Top-`rank` factors of Wh (N, K): up (N, r) = U S, down (K, r) = V. Exact SVD for small matrices,
    randomized (Halko et al.) for large ones, where the full SVD would dominate quantization time."""
    if rank == 0:
        return Wh.new_zeros(Wh.shape[0], 0), Wh.new_zeros(Wh.shape[1], 0)
    if min(Wh.shape) <= 2048:
        dt = torch.float64 if Wh.device.type == "cpu" else torch.float32
        U, S, Vh = torch.linalg.svd(Wh.to(dt), full_matrices=False)
        return (U[:, :rank] * S[:rank]).float(), Vh[:rank].t().float()
    U, S, V = torch.svd_lowrank(Wh, q=rank + 16, niter=4)
    return U[:, :rank] * S[:rank], V[:, :rank]


def svdquant_decompose(W: torch.Tensor, smooth: torch.Tensor, rank: int, group: int, dtype):
    """W (N, K), smooth λ (K,) already in storage dtype -> (λ, L_down (K,r), L_up (N,r), R codes, R scales).
    The residual is taken against the *rounded* 16-bit factors, so their rounding is quantized away too."""
    Wh = W.float() * smooth.float()
    up, down = _svd_lowrank_factors(Wh, rank)
    up, down = up.to(dtype), down.to(dtype)
    R = Wh - up.float() @ down.float().t()
    s = weight_scales(R, group).to(dtype)          # two-level: u·m is exact in the 16-bit dtype
    return smooth, down, up, quantize_groups(R, s, group), s


def smooth_input(x: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
    """x̂ = x / λ in float32, as x · (1/λ): the kernels multiply by the reciprocal (one IEEE division per
    channel instead of one per element), and the reference rounds the same way."""
    return x.float() * (1.0 / smooth.float())


def svdquant_product(x, smooth, down, up, residual, group, act_bits) -> torch.Tensor:
    """x (M, K) -> (x/λ) L_down L_upᵀ + Q4(x/λ) Rᵀ in float32 (no bias); R already dequantized."""
    xs = smooth_input(x, smooth)
    y = (xs @ down.float()) @ up.float().t()
    xq = fake_quant_int4(xs, group) if act_bits else xs
    return y + xq @ residual.t()


def _output_error(W, x, parts, group, act_bits) -> float:
    """Squared error of the quantized layer's output vs x W^T on the sample (bias cancels)."""
    smooth, down, up, rq, rs = parts
    x = x.float().to(W.device)
    y = svdquant_product(x, smooth, down, up, dequantize_groups(rq, rs, group), group, act_bits)
    return float((y - x @ W.float().t()).pow(2).sum())


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(|ref|^2 / |ref - approx|^2)."""
    ref, approx = ref.double(), approx.double()
    noise = (ref - approx).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(ref.pow(2).sum().item() / noise)


@dataclass
class LayerShape:
    in_features: int
    out_features: int
    bias: bool


def w4a4_nbytes(shape: LayerShape, rank: int, group: int, param_bytes: int = 2) -> int:
    """Stored bytes of one W4A4Linear, from its shape (equals W4A4Linear.nbytes)."""
    K, N = shape.in_features, shape.out_features
    return (N * K // 2 + N * (K // group) * param_bytes + K * param_bytes + (K + N) * rank * param_bytes
            + (N * param_bytes if shape.bias else 0))
