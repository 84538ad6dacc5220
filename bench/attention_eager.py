"""The INT8-KV attention paths launched eagerly, as the large scales of a generation run them (40
blocks in a row, no CUDA graph): wall time per call against the GPU time per call, and the CPU
operators that take the host's time (torch.profiler). A path whose wall time exceeds its GPU time
here is bound by the host in the pipeline.

    python3 bench/attention_eager.py [--scales 10,11,12] [--json out.json]
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

from test_kernels_gpu import SCALES_1024, _kv_case      # noqa: E402
from kernels_under_test import attention_module         # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="10,11,12")
    ap.add_argument("--blocks", type=int, default=40)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    mod = attention_module()
    rows = []
    for si in (int(s) for s in a.scales.split(",")):
        last = si == len(SCALES_1024) - 1
        lq = SCALES_1024[si]
        n_cached = sum(SCALES_1024[:si]) if last else sum(SCALES_1024[:si + 1])
        q, kq, vq, prm, kt, vt = _kv_case(n_cached, lq if last else 0, lq, seed=si)
        tail = (kt, vt) if last else (None, None)
        paths = {"kernel": lambda: mod.int8_kv_attention(q, kq, vq, n_cached, *prm, *tail, out=q),
                 "sdpa": lambda: mod.int8_kv_attention_sdpa(q, kq, vq, n_cached, *prm, *tail, out=q)}
        r = {"scale": si, "Lq": lq}
        for name, fn in paths.items():
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            segs0 = torch.cuda.memory_stats().get("segment.all.allocated", 0)
            t0 = time.perf_counter()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(a.blocks):
                fn()
            e1.record()
            host = time.perf_counter() - t0
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            r[name] = {"wall_ms_per_call": wall / a.blocks * 1e3, "host_ms_per_call": host / a.blocks * 1e3,
                       "gpu_ms_per_call": e0.elapsed_time(e1) / a.blocks,
                       "new_segments": torch.cuda.memory_stats().get("segment.all.allocated", 0) - segs0}
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(4):
                    fn()
                torch.cuda.synchronize()
            r[name]["cpu_top"] = [(e.key, round(e.cpu_time_total / 4 / 1e3, 4)) for e in
                                  sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]]
            print(f"scale {si} Lq {lq} {name:6s}: wall {r[name]['wall_ms_per_call']:.4f} ms/call, host "
                  f"{r[name]['host_ms_per_call']:.4f}, gpu {r[name]['gpu_ms_per_call']:.4f}, new segments "
                  f"{r[name]['new_segments']} | cpu ms/call: {r[name]['cpu_top'][:5]}", flush=True)
        rows.append(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
