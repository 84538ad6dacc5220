"""Where the host time of a generation goes at small scales (launch-bound): Infinity-8B layer shapes
with fewer blocks (the per-block host cost does not depend on depth), random weights, 512x512 with CFG;
per-scale wall time for bf16 and W4A4 + INT8 KV side by side, and a cProfile of one W4A4 + INT8 KV
generation (functions by own time).

    python3 bench/host_profile.py --depth 8 --json out.json --profile out.txt
"""
import argparse
import cProfile
import dataclasses
import io
import json
import os
import pstats
import re
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.edge_proof import PROMPT, build, calibrate_static_kv   # noqa: E402
from var_gen_ros.infinity.config import get_config                # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", default=None)
    a = ap.parse_args()
    cfg = dataclasses.replace(get_config("infinity_8b"), depth=a.depth, block_chunks=1)
    res, prof_text = {}, ""
    for mode in ("bf16", "w4a4_kv8"):
        gen = build(mode, "bf16", "cuda", cfg=cfg)
        if mode == "w4a4_kv8":
            from var_gen_ros.quant.api import Int8KVCacheFactory
            gen.kv_cache_factory = Int8KVCacheFactory(calibrate_static_kv(gen, a.size, a.size))
        gen.generate(PROMPT, seed=1, height=a.size, width=a.size)            # autotune, warm up
        torch.cuda.synchronize()
        times = []
        for rep in range(3):
            t = time.perf_counter()
            gen.generate(PROMPT, seed=2 + rep, height=a.size, width=a.size)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        res[mode] = {"generation_s": sorted(times)[1], "depth": a.depth}
        print(mode, json.dumps(res[mode]), flush=True)
        if mode == "w4a4_kv8":
            pr = cProfile.Profile()
            pr.enable()
            gen.generate(PROMPT, seed=9, height=a.size, width=a.size)
            torch.cuda.synchronize()
            pr.disable()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(40)
            prof_text = s.getvalue()
        del gen
        torch.cuda.empty_cache()
    print(prof_text[:9000])
    if a.json:
        json.dump({"device": torch.cuda.get_device_name(), **res}, open(a.json, "w"), indent=1)
    if a.profile:   # file names relative to site-packages and the repository (no machine paths)
        prof_text = re.sub(r"\S*site-packages/", "", prof_text).replace(ROOT + os.sep, "")
        open(a.profile, "w").write(prof_text)


if __name__ == "__main__":
    main()
