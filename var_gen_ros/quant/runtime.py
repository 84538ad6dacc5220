"""Apply the node's / CLI's precision settings to a loaded float generator (ROS-free).

quantization=w4a4: load `<bundle>/w4a4` (written by `var-gen quantize`) when it exists, otherwise
calibrate and quantize now on the built-in prompt list. kv_cache=int8|bf16 then sets the cache:
int8 uses the saved static scales when there are any, else per-scale dynamic ones.
"""
from __future__ import annotations

import os
import time

from ..infinity.kv_cache import KVCache
from .api import MANIFEST, Int8KVCacheFactory, QuantConfig, load_quantized, quantize_

QUANTIZED_SUBDIR = "w4a4"


def apply_precision(generator, quantization: str, kv_cache: str, bundle_path: str = "", log=print) -> str:
    """Returns a one-line description of what was applied (for logs and diagnostics)."""
    if quantization not in ("bf16", "w4a4"):
        raise ValueError(f"quantization must be bf16 or w4a4, not {quantization!r}")
    if kv_cache not in ("bf16", "int8"):
        raise ValueError(f"kv_cache must be bf16 or int8, not {kv_cache!r}")
    how = "float weights"
    if quantization == "w4a4":
        qdir = os.path.join(bundle_path, QUANTIZED_SUBDIR) if bundle_path else ""
        if qdir and os.path.isfile(os.path.join(qdir, MANIFEST)):
            load_quantized(generator, qdir)
            how = f"W4A4 loaded from {QUANTIZED_SUBDIR}/"
        else:
            t = time.perf_counter()
            rep = quantize_(generator, QuantConfig(kv="int8" if kv_cache == "int8" else "none"))
            how = f"W4A4 calibrated at start-up ({len(rep.layers)} layers, {time.perf_counter() - t:.1f} s)"
            log(f"no {QUANTIZED_SUBDIR}/ in the bundle: quantized at start-up ({how}); "
                f"run `var-gen quantize` once to skip this")
    static = getattr(generator, "kv_static_scales", None)
    if kv_cache == "int8":
        generator.kv_cache_factory = Int8KVCacheFactory(static)
        how += ", INT8 KV (" + ("static scales)" if static is not None else "dynamic per-scale scales)")
    else:
        generator.kv_cache_factory = KVCache
        how += ", 16-bit KV"
    return how


TEXT_ENCODER_MODES = ("bf16", "int8", "int4", "cpu")


def apply_text_encoder(generator, mode: str) -> str:
    """Where and how the text encoder lives: `bf16` (as loaded, on the generator's device), `int8`
    (weight-only INT8 per output channel, half the bytes of bf16), `int4` (weight-only INT4 in 64-wide
    groups and the token table in INT8 per row, 0.29 of bf16's bytes at T5-XL's shapes), or `cpu`
    (float32 on the host; on a discrete GPU this frees its memory entirely, on Jetson's shared memory it
    does not)."""
    import torch
    from .int8_weight import quantize_int8_weights_
    if mode not in TEXT_ENCODER_MODES:
        raise ValueError(f"text_encoder must be one of {', '.join(TEXT_ENCODER_MODES)}, not {mode!r}")
    te = generator.text_encoder
    cache = getattr(generator, "prompt_cache", None)
    if cache is not None:               # features of the encoder as it was no longer hold
        cache.clear()
    if te is None or mode == "bf16":
        return "text encoder as loaded"
    if mode == "int8":
        n = quantize_int8_weights_(te.model)
        return f"text encoder INT8 weights ({n} Linears)"
    if mode == "int4":
        from .int4_weight import quantize_int4_weights_, quantize_t5_embedding_
        n = quantize_int4_weights_(te.model)
        tables = quantize_t5_embedding_(te.model)
        return f"text encoder INT4 weights ({n} Linears, groups of 64), INT8 token table" + ("" if tables else " (none found)")
    te.model.to(device="cpu", dtype=torch.float32)
    return "text encoder on the CPU (float32)"
