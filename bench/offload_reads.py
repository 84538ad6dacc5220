"""How fast an offloaded load reads its file onto the GPU (`offload_dir`; parking.py, staged_read.py), on Infinity-8B
W4A4 with the INT4 text encoder and random weights of the real shapes: the text encoder's, the text-only layers' and
the VAE's files, each loaded by the product (`ParkedWeights._load`: pread into a ring of pinned buffers, copies to the
device overlapped) with its default settings and others (chunk size, readers), against the pageable path the loads
used before (safetensors' read into host memory, then `.to(device)`), side by side in one process, interleaved,
medians. The files are read from the page cache (written just before), as a node's repeated loads are.

    python3 bench/offload_reads.py --repeats 7 --json out.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.edge_proof import offloaded_w4a4_8b, write_json  # noqa: E402
from var_gen_ros.infinity import parking, staged_read  # noqa: E402

# (chunk MiB, buffers, readers); the first is the product's default
SETTINGS = [(8, 4, 4), (8, 4, 1), (8, 4, 2), (4, 4, 4), (16, 4, 4), (32, 4, 4), (8, 8, 8)]


def pageable(p: parking.ParkedWeights) -> dict:
    """The loads' read before: safetensors into pageable host memory, then a copy to the device, for each block."""
    from safetensors import safe_open
    with safe_open(p.path, framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k).to(p.device) for k in f.keys()}


def staged(p: parking.ParkedWeights, setting) -> dict:
    staged_read.CHUNK, staged_read.BUFFERS, staged_read.READERS = setting[0] << 20, setting[1], setting[2]
    return p._load(None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dir", default=".", help="where the offloaded files go (a disk, not a tmpfs)")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    out = {"device": torch.cuda.get_device_name(), "cpus": os.cpu_count(), "repeats": a.repeats, "files": {}}
    with offloaded_w4a4_8b(a.dir) as gen:
        for name, p in gen.parked_weights().items():
            # the same tensors both ways
            ref, got = p.views(pageable(p)), staged(p, SETTINGS[0])
            assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), name
            del ref, got
            modes = {"pageable": lambda: pageable(p)}
            modes.update({f"staged {c} MiB x {b}, {r} readers": (lambda s=(c, b, r): staged(p, s))
                          for c, b, r in SETTINGS})
            times = {m: [] for m in modes}
            for _ in range(2):                 # pinned buffers, threads
                for f in modes.values():
                    f()
            for _ in range(a.repeats):
                for m, f in modes.items():
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    r = f()
                    torch.cuda.synchronize()
                    times[m].append(time.perf_counter() - t0)
                    del r
            med = {m: statistics.median(v) for m, v in times.items()}
            out["files"][name] = {"bytes": os.path.getsize(p.path), "times_s": times, "median_ms":
                                  {m: 1e3 * v for m, v in med.items()},
                                  "gb_per_s": {m: os.path.getsize(p.path) / v / 1e9 for m, v in med.items()},
                                  "vs_pageable": {m: med["pageable"] / v for m, v in med.items()}}
    print(f"{out['device']}, {out['cpus']} CPUs; medians of {a.repeats}, interleaved")
    for name, f in out["files"].items():
        print(f"{name}: {f['bytes'] / 2**30:.3f} GiB")
        for m, v in f["median_ms"].items():
            print(f"  {m:32s} {v:8.1f} ms  {f['gb_per_s'][m]:6.2f} GB/s  {f['vs_pageable'][m]:5.2f}x pageable")
    write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
