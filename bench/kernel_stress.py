"""Stress the autotuned W4A4 GEMM (the path the model runs) against the reference: many calls with fresh
inputs at small M (where split-K runs), each output poisoned first, and after every call the split-K tile
counters must be back at zero. A second phase launches calls back to back with no synchronisation
between them (as the model does) and checks them all afterwards. Writes a JSON report of every failure
(shape, M, relative error, NaN count, counters left armed).

    python3 bench/kernel_stress.py --seconds 200 --json stress.json
"""
import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from test_kernels_gpu import _layer                      # noqa: E402
from kernels_under_test import gemm_module               # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--seconds", type=float, default=200)
ap.add_argument("--ms", default="2,3,5,17,32,48,64,100,128,200,256,512")
ap.add_argument("--shapes", default="3584x3584b,14336x3584b,3584x10752")
ap.add_argument("--json", default=None)
a = ap.parse_args()

mod = gemm_module()
Ms = [int(m) for m in a.ms.split(",")]
shapes = []
for s in a.shapes.split(","):
    k, n = s.rstrip("b").split("x")
    shapes.append((int(k), int(n), s.endswith("b")))
layers = {s: _layer(*s, seed=sum(s[:2])) for s in shapes}


def counters_armed():
    bufs = [b for k, v in mod._COUNTERS.items() if k[:2] == ("cuda", torch.cuda.current_device()) for b in v]
    return sum(int((b != 0).sum()) for b in bufs)


def check(layer, x, y, ref):
    yf = y.float()
    nan = int((~torch.isfinite(yf)).sum())
    rel = ((yf - ref).norm() / ref.norm()).item() if nan == 0 else float("inf")
    return rel, nan


report = {"device": torch.cuda.get_device_name(), "split_max_m": mod.SPLIT_MAX_M, "failures": [], "worst": {},
          "calls": 0, "burst_calls": 0}
t0 = time.time()
# warm up: autotune every (bucket, N, K) once, so the timed phases mostly run tuned kernels
for s, layer in layers.items():
    for M in Ms:
        x = torch.randn(M, s[0], device="cuda").bfloat16()
        mod.w4a4_linear(x, layer)
torch.cuda.synchronize()
report["warmup_s"] = round(time.time() - t0, 1)
print("warm-up", report["warmup_s"], "s; counters armed:", counters_armed(), flush=True)

t1 = time.time()
it = 0
while time.time() - t1 < a.seconds / 2:
    it += 1
    for s, layer in layers.items():
        for M in Ms:
            x = (torch.randn(M, s[0], device="cuda") * 2).bfloat16()
            x[:, torch.randint(s[0], (4,))] *= 30
            ref = layer.reference_forward(x).float()
            y = torch.full((M, s[1]), float("nan"), device="cuda", dtype=x.dtype)
            mod.w4a4_linear(x, layer, out=y)
            rel, nan = check(layer, x, y, ref)
            armed = counters_armed()
            key = f"{s[0]}x{s[1]} M={M}"
            report["worst"][key] = max(report["worst"].get(key, 0.0), rel)
            report["calls"] += 1
            if rel > 1e-3 or nan or armed:
                f = dict(phase="sync", shape=s, M=M, rel=rel, nan=nan, counters_armed=armed, iteration=it)
                report["failures"].append(f)
                print("FAIL", f, flush=True)
                for k, v in mod._COUNTERS.items():     # split-K tiles and the low-rank reduction's rows
                    for b in v:
                        b.zero_()      # re-arm so later calls test afresh
print("sync phase:", report["calls"], "calls,", len(report["failures"]), "failures", flush=True)

# burst: 64 calls queued back to back (fresh inputs, poisoned outputs), then all checked
t2 = time.time()
while time.time() - t2 < a.seconds / 2:
    for s, layer in layers.items():
        batch = []
        for i in range(64):
            M = Ms[i % len(Ms)]
            x = (torch.randn(M, s[0], device="cuda") * 2).bfloat16()
            batch.append((M, x, torch.full((M, s[1]), float("nan"), device="cuda", dtype=x.dtype)))
        torch.cuda.synchronize()
        for M, x, y in batch:
            mod.w4a4_linear(x, layer, out=y)
        for M, x, y in batch:
            rel, nan = check(layer, x, y, layer.reference_forward(x).float())
            report["burst_calls"] += 1
            if rel > 1e-3 or nan:
                f = dict(phase="burst", shape=s, M=M, rel=rel, nan=nan)
                report["failures"].append(f)
                print("FAIL", f, flush=True)
        armed = counters_armed()
        if armed:
            report["failures"].append(dict(phase="burst", shape=s, counters_armed=armed))
            print("FAIL counters armed after burst", s, armed, flush=True)
print("burst phase:", report["burst_calls"], "calls; failures in all:", len(report["failures"]), flush=True)
print("worst rel:", max(report["worst"].values()), flush=True)
if a.json:
    with open(a.json, "w") as f:
        json.dump(report, f, indent=1)
