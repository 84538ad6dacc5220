"""One call to quantize a Generator (torchao style), and the on-disk form of the result.

    report = quantize_(gen, QuantConfig(rank=32, group=64, kv="int8"), calib_prompts)
    save_quantized(gen, "bundle/w4a4");   load_quantized(other_gen, "bundle/w4a4")

Calibration runs the float generator on the prompts (CFG, the default schedule) with hooks on the
Linear layers it will replace (per-channel absmax, moments, a uniform reservoir of token rows) and a
KV cache that records per-channel statistics; then every selected Linear becomes a W4A4Linear with
its own searched smoothing, and the generator's KV cache becomes Int8KVCache.
"""
from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .kv_int8 import Int8KVCache, KVStatsRecorder, asym_params
from .w4a4 import DEFAULT_ALPHAS, W4A4Linear, sqnr_db

FORMAT, VERSION = "var_gen_ros.quantized", 1
MODES = ("w4a4", "w4a16", "keep")

# First matching pattern wins. The per-block Linears (self-attn qkv/proj, cross-attn q/kv/proj, FFN
# fc1/fc2) and the shared AdaLN projection are W4A4; the text projections, the word embedding and the
# head (with its AdaLN) stay in 16 bits: they are a tiny share of the bytes and feed every token.
DEFAULT_POLICY: Tuple[Tuple[str, str], ...] = (
    ("block_chunks.*", "w4a4"),
    ("shared_ada_lin.*", "w4a4"),
    ("*", "keep"),
)
NEVER_QUANTIZED = ("head",)     # read as a raw weight by Infinity.logits (float32 head)

# A small calibration set in the default model's vocabulary (colours, shapes, counts, positions),
# also reasonable English for T5-based checkpoints.
DEFAULT_CALIB_PROMPTS = (
    "a red circle on a white background",
    "two small blue squares on a yellow background, top left",
    "a large green triangle on a black background",
    "three orange stars on a gray background, bottom right",
    "a purple square and a yellow circle on a white background",
    "a small cyan triangle on a red background, center",
    "two large white circles on a blue background",
    "a pink star on a green background, top right",
)


class QuantizationError(RuntimeError):
    """A quantized checkpoint that does not fit the model, or a policy that cannot be applied."""


@dataclass
class QuantConfig:
    rank: int = 32
    group: int = 64
    kv: str = "int8"                 # int8 | none
    kv_scales: str = "static"        # static (calibrated) | dynamic (per stored scale)
    alphas: Tuple[float, ...] = DEFAULT_ALPHAS
    calib_rows: int = 256            # token rows kept per layer for the α search
    policy: Tuple[Tuple[str, str], ...] = DEFAULT_POLICY
    seed: int = 0
    calib_cfg: Optional[float] = None   # CFG scale during calibration (None: the model's default)

    def __post_init__(self):
        self.alphas = tuple(float(a) for a in self.alphas)
        self.policy = tuple((str(p), str(m)) for p, m in self.policy)
        for _, m in self.policy:
            if m not in MODES:
                raise ValueError(f"policy mode {m!r} is not one of {MODES}")
        if self.kv not in ("int8", "none"):
            raise ValueError(f"kv must be 'int8' or 'none', not {self.kv!r}")
        if self.kv_scales not in ("static", "dynamic"):
            raise ValueError(f"kv_scales must be 'static' or 'dynamic', not {self.kv_scales!r}")

    def mode_for(self, name: str) -> str:
        for pattern, mode in self.policy:
            if fnmatch.fnmatchcase(name, pattern):
                return mode
        return "keep"


def _param_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """16-bit storage for scales, smoothing and the low-rank branch: bf16 for a bf16 model, else fp16."""
    return torch.bfloat16 if model_dtype == torch.bfloat16 else torch.float16


# ---------------------------------------------------------------- calibration
class ActivationStats:
    """Per-layer input statistics gathered by a forward pre-hook."""

    def __init__(self, rows: int, seed: int):
        self.absmax = None
        self.moments = torch.zeros(5, dtype=torch.float64)   # n, Σx, Σx², Σx³, Σx⁴ over all elements
        self.rows, self.keep = None, rows
        self.keys = None
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, module, inputs):
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
        am = x.abs().amax(0)
        self.absmax = am if self.absmax is None else torch.maximum(self.absmax, am)
        xd = x.double()
        self.moments += torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device),
                                     xd.sum(), xd.pow(2).sum(), xd.pow(3).sum(), xd.pow(4).sum()]).cpu()
        # uniform reservoir: each row gets a random key, the `keep` largest keys stay
        keys = torch.rand(x.shape[0], generator=self.gen)
        rows = torch.cat([self.rows, x.cpu()]) if self.rows is not None else x.cpu()
        keys = torch.cat([self.keys, keys]) if self.keys is not None else keys
        if rows.shape[0] > self.keep:
            top = keys.topk(self.keep).indices
            rows, keys = rows[top], keys[top]
        self.rows, self.keys = rows, keys

    def summary(self) -> dict:
        n, s1, s2, s3, s4 = self.moments.tolist()
        mean = s1 / n
        var = max(s2 / n - mean ** 2, 1e-30)
        m4 = s4 / n - 4 * mean * s3 / n + 6 * mean ** 2 * s2 / n - 3 * mean ** 4
        am = self.absmax.float().cpu()
        return {"max_to_median": float(am.max() / am.median().clamp_min(1e-12)), "kurtosis": m4 / var ** 2,
                "absmax": float(am.max())}


def candidate_linears(model: nn.Module) -> Dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def selected_layers(model: nn.Module, config: QuantConfig) -> Dict[str, str]:
    """name -> mode (w4a4 | w4a16) of the Linears the policy quantizes."""
    out = {}
    for name, lin in candidate_linears(model).items():
        mode = config.mode_for(name)
        if mode == "keep":
            continue
        if name in NEVER_QUANTIZED:
            raise QuantizationError(f"layer {name!r} cannot be quantized (the float32 head); fix the policy")
        if lin.in_features % config.group:
            raise QuantizationError(f"layer {name!r}: in_features {lin.in_features} not a multiple of group {config.group}")
        out[name] = mode
    return out


@torch.no_grad()
def calibrate(generator, names: Sequence[str], prompts: Sequence[str], config: QuantConfig):
    """Run the float generator on `prompts`; returns ({layer: ActivationStats}, [per-layer KV stats])."""
    model = generator.model
    mods = dict(model.named_modules())
    acts, handles = {}, []
    for i, n in enumerate(names):
        acts[n] = ActivationStats(config.calib_rows, config.seed * 1000 + i)
        handles.append(mods[n].register_forward_pre_hook(acts[n]))
    kv_stats = [dict() for _ in range(generator.cfg.depth)]
    old = generator.kv_cache_factory
    generator.kv_cache_factory = lambda *a, layer=0, **k: KVStatsRecorder(*a, stats=kv_stats[layer])
    try:
        for j, p in enumerate(prompts):
            generator.generate(p, seed=config.seed + j, cfg=config.calib_cfg)
    finally:
        generator.kv_cache_factory = old
        for h in handles:
            h.remove()
    return acts, kv_stats


# ---------------------------------------------------------------- KV cache factory
class Int8KVCacheFactory:
    """Builds one Int8KVCache per layer; `static` is a per-layer list of scale dicts, or None (dynamic)."""

    def __init__(self, static: Optional[List[dict]] = None):
        self.static = static
        self._on_device = {}

    def __call__(self, batch, heads, head_dim, capacity, dtype, device, layer: int = 0, alloc=None):
        st = None
        if self.static is not None:
            # moved to the device once: every cache then shares the same scale tensors (no copies per
            # generation, and fixed addresses for a CUDA graph that reads them)
            dev = str(torch.device(device))
            if dev not in self._on_device:
                self._on_device[dev] = [{n: t.to(device=device, dtype=torch.float32) for n, t in d.items()}
                                        for d in self.static]
            st = self._on_device[dev][layer]
        return Int8KVCache(batch, heads, head_dim, capacity, dtype, device, static=st, alloc=alloc)


def static_kv_scales(kv_stats: List[dict]) -> List[dict]:
    out = []
    for s in kv_stats:
        ks, kz = asym_params(s["k"]["min"], s["k"]["max"])
        vs, vz = asym_params(s["v"]["min"], s["v"]["max"])
        out.append({"k_scale": ks, "k_zero": kz, "v_scale": vs, "v_zero": vz})
    return out


# ---------------------------------------------------------------- quantize_
@dataclass
class QuantReport:
    layers: List[dict] = field(default_factory=list)     # name, mode, alpha, out_sqnr_db, bytes
    bytes_before: int = 0
    bytes_after: int = 0
    kv: str = "none"
    kv_scales: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _module_bytes(m: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


@torch.no_grad()
def quantize_(generator, config: Optional[QuantConfig] = None,
              calib_prompts: Optional[Sequence[str]] = None) -> QuantReport:
    """Calibrate on `calib_prompts` (default: DEFAULT_CALIB_PROMPTS), replace the policy's Linears by
    W4A4Linear in place, switch the KV cache to INT8. Returns per-layer output SQNR on the calibration
    tokens (quantized layer vs the float layer)."""
    config = config or QuantConfig()
    model = generator.model
    if getattr(generator, "quant_manifest", None):
        raise QuantizationError("generator is already quantized")
    layers = selected_layers(model, config)
    prompts = list(calib_prompts or DEFAULT_CALIB_PROMPTS)
    if not prompts:
        raise ValueError("quantize_ needs at least one calibration prompt")
    acts, kv_stats = calibrate(generator, list(layers), prompts, config)
    report = QuantReport(bytes_before=_module_bytes(model), kv=config.kv,
                         kv_scales=config.kv_scales if config.kv == "int8" else "")
    pdt = _param_dtype(generator.dtype)
    mods = dict(model.named_modules())
    entries = {}
    for name, mode in layers.items():
        lin, st = mods[name], acts[name]
        xs = st.rows.to(lin.weight.device) if st.rows is not None else None
        q = W4A4Linear.from_linear(lin, st.absmax, xs, rank=config.rank, group=config.group,
                                   act_bits=4 if mode == "w4a4" else None, alphas=config.alphas, param_dtype=pdt)
        sq = None
        if xs is not None:
            ref = xs.float() @ lin.weight.float().t()
            approx = q(xs.to(pdt)).float() - (0 if q.bias is None else q.bias.float())
            sq = sqnr_db(ref, approx)
        _set_module(model, name, q)
        entries[name] = {"mode": mode, "alpha": q.alpha, "in": lin.in_features, "out": lin.out_features,
                         "bias": lin.bias is not None}
        report.layers.append({"name": name, "mode": mode, "alpha": q.alpha, "out_sqnr_db": sq, "bytes": q.nbytes,
                              **st.summary()})
    report.bytes_after = _module_bytes(model)
    static = None
    if config.kv == "int8":
        static = static_kv_scales(kv_stats) if config.kv_scales == "static" else None
        generator.kv_cache_factory = Int8KVCacheFactory(static)
    generator.quant_manifest = {"format": FORMAT, "version": VERSION, "model": generator.cfg.to_dict(),
                                "quant": _config_json(config), "param_dtype": str(pdt).replace("torch.", ""),
                                "layers": entries}
    generator.kv_static_scales = static
    return report


def _config_json(c: QuantConfig) -> dict:
    d = asdict(c)
    d["policy"] = [list(p) for p in c.policy]
    d["alphas"] = list(c.alphas)
    return d


# ---------------------------------------------------------------- save / load
MANIFEST, WEIGHTS = "quant.json", "transformer_w4a4.safetensors"


def save_quantized(generator, path: str) -> str:
    """Write the quantized transformer (every parameter and buffer) + KV scales + a versioned manifest."""
    from safetensors.torch import save_file
    man = getattr(generator, "quant_manifest", None)
    if not man:
        raise QuantizationError("generator is not quantized: call quantize_ first")
    os.makedirs(path, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in generator.model.state_dict().items()}
    static = getattr(generator, "kv_static_scales", None)
    if static is not None:
        for i, s in enumerate(static):
            for n, t in s.items():
                tensors[f"kv_cache.{i}.{n}"] = t.float().contiguous().cpu()
    save_file(tensors, os.path.join(path, WEIGHTS), metadata={"format": FORMAT, "version": str(VERSION)})
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(man, f, indent=1)
    return path


def read_manifest(path: str) -> dict:
    from ..infinity.checkpoint import read_versioned_json
    return read_versioned_json(os.path.join(path, MANIFEST), FORMAT, VERSION, QuantizationError)


@torch.no_grad()
def load_quantized(generator, path: str) -> dict:
    """Turn a float generator of the same model into the saved quantized one. Refuses a manifest made
    for another model config, naming the fields that differ."""
    from safetensors import safe_open
    from ..infinity.checkpoint import CheckpointError, strict_load
    if getattr(generator, "quant_manifest", None):
        raise QuantizationError("generator is already quantized")
    man = read_manifest(path)
    mine = json.loads(json.dumps(generator.cfg.to_dict()))   # tuples -> lists, as saved
    diff = sorted(k for k in set(mine) | set(man["model"]) if mine.get(k) != man["model"].get(k))
    if diff:
        detail = ", ".join(f"{k}: saved {man['model'].get(k)!r} vs model {mine.get(k)!r}" for k in diff[:6])
        raise QuantizationError(f"{path}: quantized for model {man['model'].get('name')!r}, not this one "
                                f"({generator.cfg.name!r}); differing config fields: {detail}")
    q = man["quant"]
    pdt = getattr(torch, man["param_dtype"])
    model = generator.model
    device = generator.device
    for name, e in man["layers"].items():
        try:
            model.get_submodule(name)
        except AttributeError:
            raise QuantizationError(f"{path}: layer {name!r} does not exist in this model") from None
        _set_module(model, name, W4A4Linear(e["in"], e["out"], e["bias"], q["rank"], q["group"],
                                            4 if e["mode"] == "w4a4" else None, pdt, device=device))
    wp = os.path.join(path, WEIGHTS)
    try:
        with safe_open(wp, framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:   # missing or truncated file: name it
        raise QuantizationError(f"{wp}: cannot read quantized weights ({e})") from None
    kv = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith("kv_cache.")]}
    try:
        strict_load(model, tensors, wp)
    except CheckpointError as e:
        raise QuantizationError(str(e)) from None
    model.to(device)
    static = None
    if q["kv"] == "int8":
        if q["kv_scales"] == "static":
            static = [{n: kv[f"kv_cache.{i}.{n}"] for n in ("k_scale", "k_zero", "v_scale", "v_zero")}
                      for i in range(generator.cfg.depth)]
        generator.kv_cache_factory = Int8KVCacheFactory(static)
    generator.quant_manifest = man
    generator.kv_static_scales = static
    return man
