"""`var-gen diagnose`: why W4A4 needs SVDQuant and the KV cache needs asymmetric per-channel INT8,
measured on a model.

Per quantizable Linear (inputs from a calibration run of the float model):
- activation outliers: max/median of the per-channel absmax, and the kurtosis of all input values;
- weight SQNR of INT4 group quantization: plain W, smoothed W·λ, and smoothed + low-rank (the residual);
- activation SQNR of INT4: plain x, smoothed x/λ;
- output SQNR of the whole layer vs float: plain W4A4, smoothing alone (α searched), SVDQuant.
Per layer KV: the coefficient of variation across channels of the channel absmax, and the mean channel
skewness, for keys and values; and memory by component.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .api import DEFAULT_CALIB_PROMPTS, QuantConfig, calibrate, selected_layers
from .int4 import fake_quant_int4 as _q4
from .kv_int8 import channel_stats
from .w4a4 import LayerShape, W4A4Linear, sqnr_db, w4a4_nbytes


@torch.no_grad()
def layer_diagnostics(lin: torch.nn.Linear, stats, config: QuantConfig, pdt) -> dict:
    W = lin.weight.detach().float()
    x = stats.rows.to(W.device).float()
    ref = x @ W.t()
    g = config.group
    svd = W4A4Linear.from_linear(lin, stats.absmax, x, rank=config.rank, group=g, alphas=config.alphas, param_dtype=pdt)
    smooth_only = W4A4Linear.from_linear(lin, stats.absmax, x, rank=0, group=g, alphas=config.alphas, param_dtype=pdt)
    plain = W4A4Linear.from_linear(lin, None, None, rank=0, group=g, param_dtype=pdt)
    lam = svd.smooth.float()
    Wh = W * lam
    lowrank = svd.lora_up.float() @ svd.lora_down.float().t()

    def out(q):
        return q(x.to(pdt)).float() - (0 if q.bias is None else q.bias.float())
    return {
        **stats.summary(),
        "alpha": svd.alpha,
        "w_sqnr_plain": sqnr_db(W, _q4(W, g)),
        "w_sqnr_smooth": sqnr_db(Wh, _q4(Wh, g)),
        "w_sqnr_smooth_lowrank": sqnr_db(Wh, lowrank + svd.dequantized_weight()),
        "x_sqnr_plain": sqnr_db(x, _q4(x, g)),
        "x_sqnr_smooth": sqnr_db(x / lam, _q4(x / lam, g)),
        "out_sqnr_w4a4_plain": sqnr_db(ref, out(plain)),
        "out_sqnr_smooth_only": sqnr_db(ref, out(smooth_only)),
        "out_sqnr_svdquant": sqnr_db(ref, out(svd)),
    }


@torch.no_grad()
def diagnose(generator, config: Optional[QuantConfig] = None, prompts: Optional[Sequence[str]] = None,
             layer_filter: Optional[str] = None) -> dict:
    """Calibrate the float generator and measure every layer the policy would quantize."""
    import fnmatch
    from .api import _param_dtype
    config = config or QuantConfig()
    model = generator.model
    layers = selected_layers(model, config)
    if layer_filter:   # comma-separated patterns
        pats = layer_filter.split(",")
        layers = {n: m for n, m in layers.items() if any(fnmatch.fnmatchcase(n, p) for p in pats)}
    acts, kv_stats = calibrate(generator, list(layers), list(prompts or DEFAULT_CALIB_PROMPTS), config)
    pdt = _param_dtype(generator.dtype)
    mods = dict(model.named_modules())
    rows = [{"name": n, "mode": m, **layer_diagnostics(mods[n], acts[n], config, pdt)} for n, m in layers.items()]
    kv = []
    for i, s in enumerate(kv_stats):
        if "k" not in s:
            continue
        k, v = channel_stats(s["k"]), channel_stats(s["v"])
        kv.append({"layer": i, "k_cv": k["cv"], "k_skewness": k["skewness"], "k_abs_skewness": k["abs_skewness"],
                   "v_cv": v["cv"], "v_skewness": v["skewness"], "v_abs_skewness": v["abs_skewness"]})
    return {"model": generator.cfg.name, "quant": {"rank": config.rank, "group": config.group},
            "prompts": len(list(prompts or DEFAULT_CALIB_PROMPTS)), "layers": rows, "kv": kv,
            "memory": memory_by_component(generator, config)}


def memory_by_component(generator, config: QuantConfig, kv_tokens: Optional[int] = None) -> dict:
    """Bytes of each component in 16-bit and quantized form, computed from shapes (no model needed
    beyond its module tree: works on the meta device)."""
    from ..infinity.config import schedule_for
    model, cfg = generator.model, generator.cfg
    layers = selected_layers(model, config)
    mods = dict(model.named_modules())
    total16 = sum(p.numel() * 2 for p in model.parameters()) + sum(b.numel() * 2 for b in model.buffers()
                                                                   if b.is_floating_point())
    lin16 = sum(mods[n].weight.numel() * 2 + (mods[n].out_features * 2 if mods[n].bias is not None else 0)
                for n in layers)
    q = sum(w4a4_nbytes(LayerShape(mods[n].in_features, mods[n].out_features, mods[n].bias is not None),
                        config.rank, config.group) for n in layers)
    if kv_tokens is None:
        kv_tokens = schedule_for(cfg).cached_tokens
    kv16 = 2 * 2 * cfg.depth * cfg.embed_dim * kv_tokens * 2        # K+V, CFG batch 2, bf16
    kv8 = kv16 // 2 + cfg.depth * 4 * cfg.embed_dim * 4             # int8 + static scale/zero (fp32)
    out = {"transformer_bf16": total16, "transformer_w4a4": total16 - lin16 + q,
           "quantized_linears_bf16": lin16, "quantized_linears_w4a4": q,
           "kv_cache_bf16_cfg": kv16, "kv_cache_int8_cfg": kv8, "kv_tokens": kv_tokens}
    if getattr(generator, "vae", None) is not None:
        out["vae"] = sum(t.numel() * t.element_size() for t in generator.vae.parameters())
    te = getattr(generator, "text_encoder", None)
    if te is not None:
        out["text_encoder"] = sum(t.numel() * t.element_size() for t in te.model.parameters())
    return out


def format_table(d: dict) -> str:
    def f(v):
        return "inf" if v == math.inf else f"{v:.1f}"
    head = (f"{'layer':44s} {'max/med':>8s} {'kurt':>7s} {'α':>4s} | {'W plain':>7s} {'W sm':>6s} {'W sm+lr':>7s} | "
            f"{'x plain':>7s} {'x sm':>6s} | {'out W4A4':>8s} {'smooth':>6s} {'SVDQ':>6s}  (SQNR dB)")
    lines = [head, "-" * len(head)]
    for r in d["layers"]:
        a = "-" if r["alpha"] is None else f"{r['alpha']:.1f}"
        lines.append(f"{r['name'][-44:]:44s} {r['max_to_median']:8.1f} {r['kurtosis']:7.1f} {a:>4s} | "
                     f"{f(r['w_sqnr_plain']):>7s} {f(r['w_sqnr_smooth']):>6s} {f(r['w_sqnr_smooth_lowrank']):>7s} | "
                     f"{f(r['x_sqnr_plain']):>7s} {f(r['x_sqnr_smooth']):>6s} | {f(r['out_sqnr_w4a4_plain']):>8s} "
                     f"{f(r['out_sqnr_smooth_only']):>6s} {f(r['out_sqnr_svdquant']):>6s}")
    if d["kv"]:
        lines.append("")
        lines.append(f"{'KV layer':>8s} {'K cv':>6s} {'K skew':>7s} {'V cv':>6s} {'V skew':>7s}")
        for k in d["kv"]:
            lines.append(f"{k['layer']:8d} {k['k_cv']:6.2f} {k['k_skewness']:7.2f} {k['v_cv']:6.2f} {k['v_skewness']:7.2f}")
    lines.append("")
    for k, v in d["memory"].items():
        lines.append(f"{k:28s} {v / 2**20:12.2f} MiB" if k != "kv_tokens" else f"{k:28s} {v}")
    return "\n".join(lines)
