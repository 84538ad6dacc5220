"""Is the pick the autotuner makes at a bucket's first row count still the best at the rows that matter most?

The i8 GEMM is tuned per row bucket (powers of two) at the first call that meets it. A 1024² generation with CFG
meets the 2048-row bucket first at 1152 rows (its ninth scale) and then serves scales 10-13, most of the transformer's
time, at 2048 rows (1024-token slices) with that pick (docs/BENCHMARKS.md, twenty-third session). This times, for each
block shape, the product's call at `--target` rows after a first call at `--first` rows (which makes or reads the
pick, as a generation does), against every candidate of the bucket run as a fixed config at `--target` rows: the
W4A4 forward on the workspace path (kernel 1 + GEMM; the workspace is unpacked once, inside `workspaces_kept`, as
for a sliced scale), CUDA-graph replay, median.

    python3 bench/bucket_retune.py [--first 1152] [--target 2048] [--json out.json]
"""
import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import _layer             # noqa: E402
from kernels_under_test import gemm_module      # noqa: E402
from bench.w4a4_stages import BLOCK_SHAPES, _ms  # noqa: E402


def config_dict(c) -> dict:
    """A triton.Config as w4a4_linear's `config`."""
    return {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}


def name(cfg: dict) -> str:
    return (f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']} swap={cfg.get('SWAP')} split={cfg.get('SPLIT_K', 1)} "
            f"kstep={cfg.get('KSTEP', 64)} tma={cfg.get('TMA', False)} w={cfg['num_warps']} s={cfg['num_stages']}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first", type=int, default=1152)
    ap.add_argument("--target", type=int, default=2048)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    mod = gemm_module()
    mod.GLUON_I8W = False        # the Triton i8w GEMM's picks (on sm_90 the product's i8w calls from 513 rows are Gluon's)
    arch = torch.cuda.get_device_capability()
    arch = arch[0] * 10 + arch[1]
    bucket = mod._bucket(a.target)
    if mod._bucket(a.first) != bucket:
        raise SystemExit(f"--first {a.first} is in bucket {mod._bucket(a.first)}, --target {a.target} in {bucket}")
    rows = []
    for K, N, bias in BLOCK_SHAPES:
        layer = _layer(K, N, bias, 0)
        x1 = torch.randn(a.first, K, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(a.target, K, device="cuda", dtype=torch.bfloat16)
        y = torch.empty(a.target, N, device="cuda", dtype=torch.bfloat16)
        cands = mod.i8_candidates(mod.tile_candidates(mod.I8_SMALL_M_CONFIGS, mod.I8_LARGE_M_CONFIGS, bucket),
                                  True, K, arch)
        with mod.workspaces_kept():
            mod.w4a4_linear(x1, layer, path="i8w")                # the bucket's pick, made (or read) at --first
            ref = layer.reference_forward(x).float()
            product = _ms(lambda: mod.w4a4_linear(x, layer, out=y, path="i8w"))
            assert ((y.float() - ref).norm() / ref.norm()).item() <= 1e-3
            r = {"K": K, "N": N, "first": a.first, "target": a.target, "bucket": bucket, "product_ms": product,
                 "candidates": {}}
            for c in cands:
                cfg = config_dict(c)
                try:
                    y.fill_(float("nan"))
                    mod.w4a4_linear(x, layer, out=y, path="i8w", config=cfg)
                    rel = ((y.float() - ref).norm() / ref.norm()).item()
                    r["candidates"][name(cfg)] = {"ms": _ms(lambda: mod.w4a4_linear(x, layer, out=y, path="i8w",
                                                                                      config=cfg)), "rel": rel}
                except Exception as e:        # a tile this GPU cannot hold (shared memory)
                    r["candidates"][name(cfg)] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
        timed = {k: v["ms"] for k, v in r["candidates"].items() if "ms" in v}
        best = min(timed, key=timed.get)
        r["best"], r["best_ms"] = best, timed[best]
        rows.append(r)
        print(f"{K:5d} -> {N:5d} at {a.target} rows (pick made at {a.first}): product {product * 1e3:7.1f} us, "
              f"best candidate {timed[best] * 1e3:7.1f} us ({best}), product / best {product / timed[best]:.3f}; "
              f"worst rel err {max(v.get('rel', 0) for v in r['candidates'].values()):.1e}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
