"""Model configs and scale schedules of Infinity (FoundationVision/Infinity, CVPR 2025).

Numbers are the official ones (tools/run_infinity.py `load_transformer`, infinity/utils/
dynamic_resolution.py, bsq_vae/vae.py). Everything is a plain dataclass that round-trips through
JSON so a bundle's `config.json` fully describes the model it holds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

Scale = Tuple[int, int]  # (h, w) in transformer tokens; images are one frame (t = 1)


@dataclass
class VAEConfig:
    """BSQ-VAE (flux-style conv autoencoder + multi-scale binary spherical quantizer)."""
    codebook_dim: int = 32                 # bits per latent pixel (d32 for 2B, 14 for 8B)
    patch_size: int = 16                   # spatial down-sampling factor of the encoder
    base_ch: int = 128
    ch_mult: Tuple[int, ...] = (1, 2, 4, 4, 4)
    num_res_blocks: int = 2
    in_channels: int = 3

    def __post_init__(self):
        self.ch_mult = tuple(self.ch_mult)
        n_down = len(self.ch_mult) - 1
        if 2 ** n_down < self.patch_size:
            raise ValueError(f"VAEConfig: {len(self.ch_mult)} levels cannot reach patch_size {self.patch_size}")


@dataclass
class InfinityConfig:
    name: str
    depth: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    block_chunks: int = 8                  # blocks are stored as block_chunks.{i}.module.{j}
    text_channels: int = 2048              # T5 width (flan-t5-xl d_model)
    text_maxlen: int = 512                 # rows of cfg_uncond
    vae: VAEConfig = field(default_factory=VAEConfig)
    spatial_patchify: bool = False         # 8B: 2x2 pixel-unshuffle of the f8 latent -> f16 tokens
    norm_eps: float = 1e-6
    num_levels: int = 15                   # rows of lvl_embed
    text_pool_heads: Optional[int] = None  # None = official rule: Ct5 // (64 if D > 4096 else 128)
    # Tiny/default models may use their own schedule (list of (h, w)); None = official tables.
    custom_scales: Optional[List[Scale]] = None
    # Sampling defaults (official: cfg 3, tau 1.0 for 8B; top_k 900 / top_p 0.97 in run_infinity.py)
    default_cfg: float = 3.0
    default_tau: float = 1.0
    default_top_k: int = 900
    default_top_p: float = 0.97

    def __post_init__(self):
        if isinstance(self.vae, dict):
            self.vae = VAEConfig(**self.vae)
        if self.custom_scales is not None:
            self.custom_scales = [tuple(s) for s in self.custom_scales]
        if self.embed_dim % self.num_heads:
            raise ValueError(f"{self.name}: embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}")
        if self.depth % self.block_chunks:
            raise ValueError(f"{self.name}: depth {self.depth} not divisible by block_chunks {self.block_chunks}")
        if self.ffn_hidden <= 0:
            raise ValueError(f"{self.name}: embed_dim {self.embed_dim} too small for the FFN rounding rule")

    # -- derived sizes (names as in the official code) --
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def d_vae(self) -> int:
        """Bits per transformer token."""
        return self.vae.codebook_dim * (4 if self.spatial_patchify else 1)

    @property
    def vocab(self) -> int:
        """Head width V: one binary logit pair per bit."""
        return 2 * self.d_vae

    @property
    def ffn_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio / 256) * 256

    @property
    def pool_heads(self) -> int:
        if self.text_pool_heads is not None:
            return self.text_pool_heads
        return self.text_channels // (64 if self.embed_dim > 4096 else 128)

    @property
    def token_stride(self) -> int:
        """Pixels per transformer token along one side."""
        return self.vae.patch_size * (2 if self.spatial_patchify else 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vae"]["ch_mult"] = list(self.vae.ch_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InfinityConfig":
        return cls(**d)

    def num_params(self) -> int:
        """Parameter count of the transformer, from the shapes (no allocation)."""
        from .model import Infinity  # local import: model imports config
        import torch
        with torch.device("meta"):
            m = Infinity(self)
        return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------- official sizes
VAE_D32 = VAEConfig(codebook_dim=32, patch_size=16, ch_mult=(1, 2, 4, 4, 4))       # infinity_vae_d32reg.pth
VAE_D56_F8 = VAEConfig(codebook_dim=14, patch_size=8, ch_mult=(1, 2, 4, 4))        # infinity_vae_d56_f8_14_patchify.pth

INFINITY_2B = InfinityConfig("infinity_2b", depth=32, embed_dim=2048, num_heads=16, block_chunks=8,
                             vae=VAE_D32, spatial_patchify=False)
INFINITY_8B = InfinityConfig("infinity_8b", depth=40, embed_dim=3584, num_heads=28, block_chunks=8,
                             vae=VAE_D56_F8, spatial_patchify=True)
# The scaling-study sizes (same block code); block_chunks = 4 as in run_infinity.py.
INFINITY_LAYER12 = InfinityConfig("infinity_layer12", depth=12, embed_dim=768, num_heads=8, block_chunks=4, vae=VAE_D32)
INFINITY_LAYER16 = InfinityConfig("infinity_layer16", depth=16, embed_dim=1152, num_heads=12, block_chunks=4, vae=VAE_D32)
INFINITY_LAYER24 = InfinityConfig("infinity_layer24", depth=24, embed_dim=1536, num_heads=16, block_chunks=4, vae=VAE_D32)

PRESETS = {c.name: c for c in (INFINITY_2B, INFINITY_8B, INFINITY_LAYER12, INFINITY_LAYER16, INFINITY_LAYER24)}


def tiny_config(patchify: bool = False, name: Optional[str] = None) -> InfinityConfig:
    """A few-hundred-kB model with the same block code, for tests (16x16 images)."""
    vae = VAEConfig(codebook_dim=4, patch_size=2 if patchify else 4, base_ch=32,
                    ch_mult=(1, 1) if patchify else (1, 1, 2), num_res_blocks=1)
    return InfinityConfig(name or ("tiny_patchify" if patchify else "tiny"), depth=2, embed_dim=64, num_heads=4,
                          block_chunks=2, text_channels=32, text_maxlen=16, vae=vae, spatial_patchify=patchify,
                          text_pool_heads=2, custom_scales=[(1, 1), (2, 2), (3, 3), (4, 4)])


def get_config(name: str) -> InfinityConfig:
    if name in PRESETS:
        return PRESETS[name]
    if name in ("tiny", "tiny_patchify"):
        return tiny_config(name == "tiny_patchify")
    raise KeyError(f"unknown model config {name!r}; known: {sorted(PRESETS) + ['tiny', 'tiny_patchify']}")


# ---------------------------------------------------------------- scale schedules
# infinity/utils/dynamic_resolution.py: (h, w) per scale for each h/w ratio at '1M' (13 scales)
_RATIO2HWS = {
    1.000: [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)],
    1.250: [(1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36), (55, 44), (70, 56)],
    1.333: [(1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36), (60, 45), (72, 54)],
    1.500: [(1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32), (63, 42), (78, 52)],
    1.750: [(1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32), (70, 40), (84, 48)],
    2.000: [(1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30), (74, 37), (90, 45)],
    2.500: [(1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26), (80, 32), (100, 40)],
    3.000: [(1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24), (90, 30), (111, 37)],
}
FULL_RATIO2HWS = dict(_RATIO2HWS)
for _r, _hws in _RATIO2HWS.items():
    if _r != 1.0:  # the official key of the inverse ratio is truncated to 3 decimals
        FULL_RATIO2HWS[int(1 / _r * 1000) / 1000] = [(w, h) for h, w in _hws]
H_DIV_W_TEMPLATES = sorted(FULL_RATIO2HWS)
PN_NUM_SCALES = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}


@dataclass(frozen=True)
class ScaleSchedule:
    """The scales of one generation and the grid that 2-D RoPE positions are normalised to."""
    scales: Tuple[Scale, ...]
    rope_grid: Scale            # (h, w) of the ratio's final '1M' scale (rope2d_normalized_by_hw = 2)

    @property
    def token_counts(self) -> List[int]:
        return [h * w for h, w in self.scales]

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)

    @property
    def cached_tokens(self) -> int:
        """Tokens whose K/V a later scale reads: every scale but the last."""
        return self.total_tokens - self.token_counts[-1]

    def image_size(self, token_stride: int) -> Tuple[int, int]:
        h, w = self.scales[-1]
        return h * token_stride, w * token_stride

    def offsets(self) -> List[int]:
        out, acc = [], 0
        for n in self.token_counts:
            out.append(acc)
            acc += n
        return out


def nearest_ratio(h_div_w: float) -> float:
    return min(H_DIV_W_TEMPLATES, key=lambda r: abs(r - h_div_w))


def official_schedule(h_div_w: float = 1.0, pn: str = "1M") -> ScaleSchedule:
    if pn not in PN_NUM_SCALES:
        raise ValueError(f"pn must be one of {list(PN_NUM_SCALES)}, got {pn!r}")
    hws = FULL_RATIO2HWS[nearest_ratio(h_div_w)]
    return ScaleSchedule(tuple(hws[:PN_NUM_SCALES[pn]]), rope_grid=hws[-1])


def schedule_for(cfg: InfinityConfig, height: Optional[int] = None, width: Optional[int] = None,
                 h_div_w: Optional[float] = None, pn: Optional[str] = None) -> ScaleSchedule:
    """Pick the schedule for a request: a model with custom scales has exactly one; official models
    take the nearest aspect-ratio template and the pixel budget nearest to height*width."""
    if cfg.custom_scales is not None:
        sched = ScaleSchedule(tuple(cfg.custom_scales), rope_grid=tuple(cfg.custom_scales[-1]))
        if height or width:
            want = (height or width, width or height)
            have = sched.image_size(cfg.token_stride)
            if want != have:
                raise ValueError(f"model {cfg.name} generates {have[0]}x{have[1]} only, asked {want[0]}x{want[1]}")
        return sched
    if h_div_w is None:
        h_div_w = (height / width) if (height and width) else 1.0
    if pn is None:
        if height and width:   # the budget whose output pixel count is nearest to the request
            hws = FULL_RATIO2HWS[nearest_ratio(h_div_w)]
            def pixels(k):
                h, w = hws[PN_NUM_SCALES[k] - 1]
                return h * w * cfg.token_stride ** 2
            pn = min(PN_NUM_SCALES, key=lambda k: abs(pixels(k) - height * width))
        else:
            pn = "1M"
    return official_schedule(h_div_w, pn)
