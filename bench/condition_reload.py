"""What a new prompt's condition costs with the text-only layers offloaded (`offload_dir`), on Infinity-8B W4A4 with
random weights of the real shapes: the read of their file, and `encode_condition` on the freshly loaded weights
with the values the layers derive from their weights (the INT8 path's weight units, the kernels' 1/λ) carried over
from before the offload (W4A4Linear.derived, the default) or made again at each load (as before the thirty-first
session), against the same forward on weights already loaded. Side by side in one process, interleaved, medians.

    python3 bench/condition_reload.py --repeats 9 --json out.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.edge_proof import PROMPT, offloaded_w4a4_8b, write_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--dir", default=".", help="where the offloaded files go (a disk, not a tmpfs)")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    with offloaded_w4a4_8b(a.dir) as gen:
        feats, mask = gen.encode_text(PROMPT, None, True)
        parked = gen.condition_parked
        layers = [m for m in gen.condition_layers().modules() if hasattr(m, "derived")]

        def run(mode: str):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with parked.loaded():
                torch.cuda.synchronize()
                t1 = time.perf_counter()
                if mode == "remade":          # what every load did before the values were carried over
                    for m in layers:
                        m._derived.clear()
                elif mode == "loaded":        # the forward again on the same tensors: nothing to make
                    gen.model.encode_condition(feats, mask)
                    torch.cuda.synchronize()
                    t1 = time.perf_counter()
                gen.model.encode_condition(feats, mask)
                torch.cuda.synchronize()
                t2 = time.perf_counter()
            return t1 - t0, t2 - t1

        for _ in range(2):                    # compiles, launch picks, the derived values once
            run("carried")
        modes = ("carried", "remade", "loaded")
        times = {m: {"load_s": [], "forward_s": []} for m in modes}
        for _ in range(a.repeats):
            for m in modes:
                load, fwd = run(m)
                times[m]["load_s"].append(load)
                times[m]["forward_s"].append(fwd)
        out = {"device": torch.cuda.get_device_name(), "layers_w4a4": len(layers),
               "bytes": parked.nbytes, "text_tokens": int(feats.shape[1]), "batch": int(feats.shape[0]),
               "repeats": a.repeats, "times": times,
               "median_ms": {m: {k: 1e3 * statistics.median(v) for k, v in t.items()} for m, t in times.items()}}
    print(f"{out['device']}: {out['layers_w4a4']} W4A4 text-only layers, {out['bytes'] / 2**30:.2f} GiB, "
          f"{out['batch']} x {out['text_tokens']} text tokens; medians of {a.repeats}, ms")
    for m, v in out["median_ms"].items():
        load = "" if m == "loaded" else f"  load {v['load_s']:7.1f}"
        print(f"  {m:8s} forward {v['forward_s']:7.2f}{load}")
    write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
