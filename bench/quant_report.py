"""Quantization quality, measured: W4A4 (+ INT8 KV) against the unquantized model on the same seeds.

    # trained default model: checker accuracy bf16 vs W4A4 vs W4A4+KV8, image PSNR and per-scale bit
    # agreement, KV static vs dynamic scales, and the diagnostics table
    python bench/quant_report.py default --bundle var_gen_ros/data/default_bundle --prompts 500 --json out.json
    # Infinity-8B shapes with random weights: the diagnostics table on a subset of layers
    python bench/quant_report.py random-8b --json out.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from var_gen_ros.cli import DTYPES                                   # noqa: E402
from var_gen_ros.infinity import Generator                           # noqa: E402
from var_gen_ros.quant import QuantConfig, quantize_                 # noqa: E402
from var_gen_ros.quant.diagnose import diagnose, format_table        # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def run_default(a):
    from var_gen_ros.checker import check
    from var_gen_ros.shapes import held_out_prompts
    dev, dt = a.device, DTYPES[a.dtype]
    prompts = held_out_prompts(a.prompts)
    modes = {
        "bf16": None,
        "w4a4": QuantConfig(kv="none"),
        "w4a4_kv8_static": QuantConfig(kv="int8", kv_scales="static"),
        "w4a4_kv8_dynamic": QuantConfig(kv="int8", kv_scales="dynamic"),
    }
    gens, out = {}, {"bundle": a.bundle, "dtype": a.dtype, "prompts": len(prompts), "modes": {}}
    for name, qc in modes.items():
        g = Generator.from_bundle(a.bundle, device=dev, dtype=dt)
        if qc is not None:
            quantize_(g, qc)
        gens[name] = g
    base_imgs = {}
    for name, g in gens.items():
        t = time.perf_counter()
        oks, ps, bit_agree = [], [], []
        for i, p in enumerate(prompts):
            r = g.generate(p, seed=i)
            oks.append(check(r.image, p).ok)
            if name == "bf16":
                base_imgs[i] = (r.image, r.bits)
            else:
                bi, bb = base_imgs[i]
                ps.append(psnr(bi, r.image))
                bit_agree.append([float((x == y).float().mean()) for x, y in zip(bb, r.bits)])
        m = {"checker_accuracy": sum(oks) / len(oks), "seconds": time.perf_counter() - t}
        if ps:
            fin = [x for x in ps if x != math.inf]
            m["psnr_vs_bf16_median"] = statistics.median(ps) if ps else None
            m["identical_images"] = sum(x == math.inf for x in ps) / len(ps)
            m["psnr_vs_bf16_mean_finite"] = statistics.fmean(fin) if fin else None
            m["bit_agreement_per_scale"] = [statistics.fmean(col) for col in zip(*bit_agree)]
        out["modes"][name] = m
        print(name, json.dumps(m), flush=True)
    g = Generator.from_bundle(a.bundle, device=dev, dtype=dt)
    d = diagnose(g, QuantConfig())
    print(format_table(d))
    out["diagnostics"] = d
    return out


def run_random_8b(a):
    from bench.pipeline import build_generator
    g = build_generator("infinity_8b", a.device, DTYPES[a.dtype])
    # first, middle and last block (all 7 Linears each) + the shared AdaLN; α grid kept short: each
    # candidate costs a randomized SVD of up to 14336 x 3584
    layers = "shared_ada_lin.1,block_chunks.0.module.0.*,block_chunks.4.module.0.*,block_chunks.7.module.4.*"
    t = time.perf_counter()
    d = diagnose(g, QuantConfig(alphas=(0.25, 0.5, 0.75), calib_rows=256), prompts=[
        "a photo of a red robot in a green field under a blue sky"], layer_filter=layers)
    d["seconds"] = time.perf_counter() - t
    print(format_table(d))
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["default", "random-8b"])
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    res = run_default(a) if a.what == "default" else run_random_8b(a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
