"""Whole-pipeline benchmark: text encoder -> every scale -> VAE decode, with CFG, at real shapes.

Random weights of the official shapes (real weights cannot be downloaded here): the transformer
(Infinity-2B/8B), the BSQ-VAE decoder, and a T5-XL-shaped encoder. Reports latency per stage and
per scale (median of --repeats after a warm-up) and GPU memory: peak allocated/reserved and bytes by
component. Later modes (W4A4, INT8 KV, kernels) plug into `build_generator`.

    python bench/pipeline.py --model infinity_8b --dtype bf16 --height 1024 --width 1024 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from var_gen_ros.infinity import BSQVAE, Generator, Infinity, get_config   # noqa: E402
from var_gen_ros.infinity.text import TextEncoder                          # noqa: E402
from var_gen_ros.cli import DTYPES                                         # noqa: E402
from var_gen_ros.infinity.tiny import build_word_tokenizer, random_init_   # noqa: E402

# google/flan-t5-xl encoder (config.json of the released model)
T5_XL = dict(d_model=2048, d_kv=64, num_heads=32, num_layers=24, d_ff=5120, vocab_size=32128,
             feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def build_text_encoder(device, dtype, tmp: str, seed: int) -> TextEncoder:
    from transformers import T5Config, T5EncoderModel
    tok = build_word_tokenizer(tmp)
    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**T5_XL))
    model = model.to(dtype).to_empty(device=device)
    # to_empty gives each module its own copy of a shared parameter; a T5EncoderModel loaded from a
    # checkpoint has one token table, which its encoder's embed_tokens shares (transformers ties them)
    model.encoder.embed_tokens.weight = model.shared.weight
    random_init_(model, seed)
    model.eval().requires_grad_(False)
    return TextEncoder(tok, model, max_length=512)


def build_generator(model_name: str, device: str, dtype: torch.dtype, seed: int = 0) -> Generator:
    cfg = get_config(model_name)
    with torch.device("meta"):
        model, vae = Infinity(cfg), BSQVAE(cfg.vae)
    model = model.to(dtype).to_empty(device=device)
    vae = vae.to(dtype).to_empty(device=device)
    random_init_(model, seed)
    random_init_(vae, seed + 1)
    model.eval().requires_grad_(False)
    vae.eval().requires_grad_(False)
    te = build_text_encoder(device, dtype, tempfile.mkdtemp(), seed + 2)
    return Generator(model, vae, te, device=device, name=f"{model_name}-random")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="infinity_8b")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", default="a photo of a red robot in a green field under a blue sky")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/pipeline.py measures GPU latency and memory: no CUDA device here")
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    gen = build_generator(a.model, dev, DTYPES[a.dtype])
    gen.prompt_cache.max_entries = 0       # each run encodes its prompt, as a new prompt would
    build_s = time.perf_counter() - t0
    weights = gen.weight_bytes()
    torch.cuda.synchronize()
    base_alloc = torch.cuda.memory_allocated()
    kw = dict(seed=0, cfg=a.cfg, height=a.height, width=a.width)
    gen.generate(a.prompt, **kw)                   # warm-up: kernels, cuBLAS handles, allocator
    runs = [gen.generate(a.prompt, **kw) for _ in range(a.repeats)]
    med = lambda xs: statistics.median(xs)
    n_scales = len(runs[0].timings["scales_s"])
    report = {
        "model": a.model, "dtype": a.dtype, "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "resolution": [a.height, a.width], "cfg": a.cfg,
        "scales": [list(s) for s in runs[0].schedule.scales], "repeats": a.repeats,
        "build_s": build_s,
        "latency_s": {
            "total": med([r.timings["total_s"] for r in runs]),
            "text_encoder": med([r.timings["text_encoder_s"] for r in runs]),
            "transformer": med([sum(r.timings["scales_s"]) for r in runs]),
            "vae_decode": med([r.timings["vae_decode_s"] for r in runs]),
            "per_scale": [med([r.timings["scales_s"][i] for r in runs]) for i in range(n_scales)],
        },
        "memory_bytes": {
            "weights": weights,
            "weights_total": sum(weights.values()),
            "allocated_before_generate": base_alloc,
            "kv_cache": runs[-1].memory["kv_cache_bytes"],
            "peak_allocated": max(r.memory["peak_allocated"] for r in runs),
            "peak_reserved": max(r.memory["peak_reserved"] for r in runs),
        },
    }
    report["memory_bytes"]["activations_and_workspace_peak"] = (
        report["memory_bytes"]["peak_allocated"] - base_alloc - report["memory_bytes"]["kv_cache"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    gib = 2 ** 30
    L = report["latency_s"]
    M = report["memory_bytes"]
    print(f"\n== {a.model} {a.dtype} {a.height}x{a.width} cfg={a.cfg} on {report['device']} (median of {a.repeats})")
    print(f"total {L['total']:.3f} s | text encoder {L['text_encoder']:.3f} s | transformer {L['transformer']:.3f} s"
          f" | VAE decode {L['vae_decode']:.3f} s")
    print("per scale (s): " + " ".join(f"{x:.3f}" for x in L["per_scale"]))
    print(f"weights {M['weights_total'] / gib:.2f} GiB " + str({k: round(v / gib, 2) for k, v in M['weights'].items()}))
    print(f"KV cache {M['kv_cache'] / gib:.2f} GiB | peak allocated {M['peak_allocated'] / gib:.2f} GiB"
          f" | peak reserved {M['peak_reserved'] / gib:.2f} GiB"
          f" | activations+workspace at peak {M['activations_and_workspace_peak'] / gib:.2f} GiB")


if __name__ == "__main__":
    main()
