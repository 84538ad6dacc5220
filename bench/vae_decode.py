"""The VAE decode of one 1024² image (Infinity-8B's BSQ-VAE decoder, random weights of its shapes, bf16) with the
GroupNorm + SiLU kernel (kernels/group_norm_triton.py, what the product runs on a GPU) against PyTorch's GroupNorm
and SiLU, and the kernel's channels-last form with the activations channels-last (VAR_GEN_VAE_CHANNELS_LAST: the
weights NCHW as an offloaded VAE's, or channels-last too); with --layouts also PyTorch's ops on channels-last weights
and activations, and cuDNN's benchmark mode. Side by side in one process, interleaved, medians, and each variant's
largest difference from PyTorch's NCHW output. With --profile, the GPU time by kernel of the first variants.

    python3 bench/vae_decode.py --repeats 9 --profile --json out.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.edge_proof import cuda_event_ms, write_json  # noqa: E402
from var_gen_ros.infinity import BSQVAE, get_config, vae as vae_module  # noqa: E402
from var_gen_ros.infinity.tiny import random_init_  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--layouts", action="store_true", help="channels-last and cuDNN benchmark variants too")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    cfg = get_config("infinity_8b").vae
    with torch.device("meta"):
        vae = BSQVAE(cfg)
    vae = vae.to(torch.bfloat16).to_empty(device="cuda")
    random_init_(vae, 1)
    vae.eval().requires_grad_(False)
    lat = a.size // cfg.patch_size
    codes = torch.randn(1, cfg.codebook_dim, lat, lat, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    kernel = vae_module._group_norm_kernel

    def decode(model, z, use_kernel):
        vae_module._group_norm_kernel = kernel if use_kernel else (lambda x: None)
        try:
            return model.decode(z)
        finally:
            vae_module._group_norm_kernel = kernel
    nhwc = BSQVAE(cfg).to(torch.bfloat16).cuda().eval().requires_grad_(False)
    nhwc.load_state_dict(vae.state_dict())
    nhwc = nhwc.to(memory_format=torch.channels_last)
    codes_cl = codes.contiguous(memory_format=torch.channels_last)

    def activations_last(model, use_kernel):     # the decoder's switch (VAR_GEN_VAE_CHANNELS_LAST)
        model.decoder.channels_last = True
        try:
            return decode(model, codes, use_kernel)
        finally:
            model.decoder.channels_last = None
    variants = {"pytorch GroupNorm": lambda: decode(vae, codes, False),
                "GroupNorm + SiLU kernel": lambda: decode(vae, codes, True),
                "channels_last activations, kernel": lambda: activations_last(vae, True),
                "channels_last, kernel": lambda: activations_last(nhwc, True)}
    if a.layouts:
        variants["channels_last, pytorch GroupNorm"] = lambda: decode(nhwc, codes_cl, False)
    with torch.inference_mode():
        ref = decode(vae, codes, False).float()
        assert kernel(codes) is not None, "the GroupNorm kernel is not available here"
        out = {"device": torch.cuda.get_device_name(), "size": a.size, "latent": list(codes.shape),
               "repeats": a.repeats, "ms": {}, "max_abs_diff": {}}
        for bench_mode in ((False, True) if a.layouts else (False,)):
            torch.backends.cudnn.benchmark = bench_mode
            for f in variants.values():          # (cuDNN's picks for this mode, the kernel's compile)
                f()
            times = {k: [] for k in variants}
            for _ in range(a.repeats):
                for k, f in variants.items():
                    times[k] += cuda_event_ms(f, 1)
            for k, f in variants.items():
                name = f"{k}{', cudnn.benchmark' if bench_mode else ''}"
                out["ms"][name] = statistics.median(times[k])
                out["max_abs_diff"][name] = (f().float() - ref).abs().max().item()
        torch.backends.cudnn.benchmark = False
        if a.profile:
            from torch.profiler import ProfilerActivity, profile
            out["profile"] = {}
            for k, f in list(variants.items())[:4]:
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    f()
                    torch.cuda.synchronize()
                rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:14]
                out["profile"][k] = [(e.key[:90], e.count, e.device_time_total / 1e3) for e in rows]
    print(f"{out['device']}: VAE decode {a.size}² (latent {out['latent']}), bf16, medians of {a.repeats}")
    for k, v in out["ms"].items():
        print(f"  {k:48s} {v:7.2f} ms  {out['ms']['pytorch GroupNorm'] / v:5.2f}x  max |diff| {out['max_abs_diff'][k]:.4f}")
    for k, rows in out.get("profile", {}).items():
        print(f"{k}: GPU ms by kernel")
        for name, n, ms in rows:
            print(f"  {ms:7.2f} ms {n:4d}x  {name}")
    write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
