"""Checkpoints: official Infinity/VAE weights in, and the runtime's bundle directory in and out.

Bundle layout (one directory):
    config.json            {"format": "var_gen_ros.bundle", "version": 1, "model": InfinityConfig}
    transformer.safetensors  Infinity state dict, official key names
    vae.safetensors          BSQ-VAE state dict, official key names
    text_encoder/            a transformers T5 encoder + tokenizer (save_pretrained layout)
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Iterable, Optional

import torch

from .config import InfinityConfig

BUNDLE_FORMAT = "var_gen_ros.bundle"
BUNDLE_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint or bundle that cannot be loaded; the message names the file and the key."""


# ---------------------------------------------------------------- reading files
def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a .pth/.pt/.bin, a .safetensors file, or a directory of (sharded) safetensors/bin."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        return _read_sharded_dir(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # truncated zip, bad header, pickle with code, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e


def _read_sharded_dir(path: str) -> Dict[str, torch.Tensor]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = os.path.join(path, index_name)
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except Exception as e:
                raise CheckpointError(f"cannot read shard index {index}: {e}") from e
            sd = {}
            for shard in sorted(set(weight_map.values())):
                part = read_state_dict(os.path.join(path, shard))
                sd.update(part)
            missing = [k for k in weight_map if k not in sd]
            if missing:
                raise CheckpointError(f"shard index {index} lists {len(missing)} keys absent from its shards, "
                                      f"first: {missing[0]!r} (expected in {weight_map[missing[0]]})")
            return sd
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if len(files) == 1:
        return read_state_dict(os.path.join(path, files[0]))
    raise CheckpointError(f"{path}: no model.safetensors.index.json / pytorch_model.bin.index.json and "
                          f"{len(files)} .safetensors files; cannot tell which weights to load")


def _unwrap(sd: dict, candidates: Iterable[str]) -> dict:
    """Official files nest the weights: {'trainer': {'gpt_fsdp': ...}} (full training ckpt),
    {'vae': ...} / {'ema': ...} (VAE)."""
    if "trainer" in sd and isinstance(sd["trainer"], dict):
        sd = sd["trainer"]
    for key in candidates:
        if key in sd and isinstance(sd[key], dict):
            return sd[key]
    return sd


# ---------------------------------------------------------------- strict loading
def strict_load(module: torch.nn.Module, sd: Dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with an error that names the offending key, shape and file."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first {missing[0]!r} {tuple(expected[missing[0]].shape)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
        raise CheckpointError(f"{source}: " + "; ".join(parts))
    for k, t in expected.items():
        if tuple(sd[k].shape) != tuple(t.shape):
            raise CheckpointError(f"{source}: key {k!r} has shape {tuple(sd[k].shape)}, model expects {tuple(t.shape)}")
    module.load_state_dict(sd, strict=True)


def load_official_checkpoint(path: str, cfg: InfinityConfig, model: Optional[torch.nn.Module] = None):
    """Load `infinity_2b_reg.pth`, `infinity_8b_weights/` (sharded) or a single safetensors file into an
    `Infinity` of `cfg` with strict key/shape checking. cfg_uncond is cut or extended to the config's
    text_maxlen as upstream does (it is a table of null text rows, its length a runtime choice)."""
    from .model import Infinity
    sd = dict(_unwrap(read_state_dict(path), ("gpt_fsdp", "gpt_ema_fsdp", "model", "state_dict")))
    if model is None:
        model = Infinity(cfg)
    for k in ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen"):
        sd.pop(k, None)  # non-persistent helpers some training checkpoints carry
    if "cfg_uncond" in sd and sd["cfg_uncond"].ndim == 2:
        old, new = sd["cfg_uncond"], model.cfg_uncond.data
        if old.shape[0] != new.shape[0] and old.shape[1] == new.shape[1]:
            n = min(old.shape[0], new.shape[0])
            sd["cfg_uncond"] = torch.cat([old[:n].to(new.dtype), new[n:].cpu()]) if n < new.shape[0] else old[:n]
    strict_load(model, sd, path)
    return model


def load_official_vae(path: str, vae: torch.nn.Module) -> torch.nn.Module:
    """Official VAE files hold {'vae': state_dict}. Older flat names (`encoder.conv_in.weight`,
    `...norm1.weight`) are mapped to the wrapped modules (`.conv.`, `.norm.`)."""
    sd = _unwrap(read_state_dict(path), ("vae", "ema"))
    sd = map_flat_vae_keys(sd, vae.state_dict().keys())
    strict_load(vae, sd, path)
    return vae


def map_flat_vae_keys(sd: Dict[str, torch.Tensor], expected: Iterable[str]) -> Dict[str, torch.Tensor]:
    expected = set(expected)
    out = {}
    for k, v in sd.items():
        if k in expected:
            out[k] = v
            continue
        stem, _, leaf = k.rpartition(".")
        for wrapped in (f"{stem}.conv.{leaf}", f"{stem}.norm.{leaf}"):
            if wrapped in expected:
                out[wrapped] = v
                break
        else:
            out[k] = v   # left for strict_load to report
    return out


# ---------------------------------------------------------------- bundles
def _safetensors_save(sd: Dict[str, torch.Tensor], path: str) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, path)


def save_bundle(path: str, cfg: InfinityConfig, model, vae, text_encoder_dir: Optional[str] = None,
                text_encoder=None, extra: Optional[dict] = None) -> None:
    """Write a bundle. The text encoder comes from a local HF directory (copied) or an object with
    `.model` and `.tokenizer` (saved with save_pretrained)."""
    os.makedirs(path, exist_ok=True)
    meta = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "model": cfg.to_dict()}
    if extra:
        meta.update(extra)
    _safetensors_save(model.state_dict(), os.path.join(path, "transformer.safetensors"))
    _safetensors_save(vae.state_dict(), os.path.join(path, "vae.safetensors"))
    te_out = os.path.join(path, "text_encoder")
    if text_encoder_dir is not None:
        if os.path.abspath(text_encoder_dir) != os.path.abspath(te_out):
            shutil.copytree(text_encoder_dir, te_out, dirs_exist_ok=True)
    elif text_encoder is not None:
        text_encoder.model.save_pretrained(te_out)
        text_encoder.tokenizer.save_pretrained(te_out)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(meta, f, indent=2)


def read_versioned_json(path: str, fmt: str, version: int, error=None) -> dict:
    """Read a JSON manifest and check its `format` and `version`; every failure raises `error`
    (default CheckpointError) naming the file."""
    error = error or CheckpointError
    if not os.path.isfile(path):
        raise error(f"{path} is missing")
    try:
        with open(path) as f:
            meta = json.load(f)
    except Exception as e:
        raise error(f"{path}: unreadable ({e})") from None
    if meta.get("format") != fmt:
        raise error(f"{path}: format {meta.get('format')!r}, expected {fmt!r}")
    if meta.get("version") != version:
        raise error(f"{path}: version {meta.get('version')!r} unsupported; this build reads version {version}")
    return meta


def read_bundle_config(path: str) -> dict:
    if not os.path.isdir(path):
        raise CheckpointError(f"bundle directory not found: {path}")
    return read_versioned_json(os.path.join(path, "config.json"), BUNDLE_FORMAT, BUNDLE_VERSION)


def load_bundle(path: str, device="cpu", dtype=torch.float32, load_text_encoder: bool = True):
    """-> (cfg, model, vae, text_encoder or None, meta). Weights are loaded strictly."""
    from .model import Infinity
    from .text import TextEncoder
    from .vae import BSQVAE
    meta = read_bundle_config(path)
    try:
        cfg = InfinityConfig.from_dict(meta["model"])
    except Exception as e:
        raise CheckpointError(f"{os.path.join(path, 'config.json')}: bad model config: {e}") from e
    with torch.device("meta"):
        model, vae = Infinity(cfg), BSQVAE(cfg.vae)
    for module, fname in ((model, "transformer.safetensors"), (vae, "vae.safetensors")):
        fpath = os.path.join(path, fname)
        if not os.path.isfile(fpath):
            raise CheckpointError(f"bundle file missing: {fpath}")
        sd = read_state_dict(fpath)
        module.to_empty(device="cpu")
        strict_load(module, sd, fpath)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    vae = vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    te = None
    if load_text_encoder:
        te = TextEncoder.from_dir(os.path.join(path, "text_encoder"), device=device, dtype=dtype,
                                  max_length=cfg.text_maxlen)
    return cfg, model, vae, te, meta
