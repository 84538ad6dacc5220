"""Where the GPU time of a 1024² generation goes, by kernel family, bf16 vs W4A4 + INT8 KV side by side.

Infinity-8B layer shapes with fewer blocks (every block does the same work, so the shares do not depend
on depth), random weights, CFG; the generator as the node runs it (chunked per-token work, the INT8
KV cache with static scales). Per mode: per-scale wall times and peaks (median of --repeats) for each
setting of slice size and CUDA graphs, then eager generations under torch.profiler: kernel time per
stage (blocks, head, VAE decode, other) against the stage's span on the GPU (the gap is the GPU
waiting on the host), the blocks' kernels summed by family (W4A4 GEMM, its quantizer, the weight
unpack, attention, cuBLAS GEMMs, everything else) and the top kernels by name.

    python3 bench/gpu_time_profile.py --depth 4 --settings 512:0,2048:4096 --profile-chunks 512 --json out.json
"""
import argparse
import dataclasses
import json
import os
import re
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.edge_proof import PROMPT, build, calibrate_static_kv   # noqa: E402
from var_gen_ros.infinity.config import get_config                # noqa: E402

# kernel name -> family; first match wins
FAMILIES = [
    # (the CUDA C++ kernels' names carry no leading underscore: w4a4_small_m_kernel, quantize_small_m_kernel; before
    # the forty-second session's run they fell into "other elementwise")
    ("w4a4 gemm", r"_w4a4_\w*kernel|w4a4_small_m_kernel"),
    ("w4a4 quantizer", r"_quantize_act|_row_amax|quantize_small_m_kernel"),
    ("w4a4 weight unpack", r"_unpack_weight|_dequant_weight"),
    ("int8-kv attention", r"_attn_int8"),
    ("kv store", r"_kv_store"),
    ("flash / sdpa", r"flash|fmha|attention|sdpa|efficient"),
    ("cuBLAS gemm", r"gemm|nvjet|sm90_xmma|sm80_xmma|cutlass|splitKreduce"),
    ("norm / reduce", r"layer_norm|LayerNorm|reduce|softmax"),
]


def family(name: str) -> str:
    for fam, pat in FAMILIES:
        if re.search(pat, name):
            return fam
    return "other elementwise"


STAGES = ("blocks", "head", "vae")


def kernel_times(prof) -> dict:
    """Device time (ms) per kernel name, per stage. A kernel belongs to the stage whose GPU range (the
    record_function ranges `tag` installs, as the profiler places them on the GPU timeline) holds its
    start; "other" is the rest (text conditioning, sampling, upsampling between scales). Works for
    Triton's launches too, which the profiler does not link to a CPU op."""
    import bisect
    cuda = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    ranges = sorted((e.time_range.start, e.time_range.end, e.name) for e in cuda if e.name in STAGES)
    starts = [r[0] for r in ranges]
    out = {s: {} for s in STAGES + ("other",)}
    out["range_ms"] = {s: 0.0 for s in STAGES}
    for a, b, name in ranges:
        out["range_ms"][name] += (b - a) / 1e3
    for e in cuda:
        if e.name in STAGES:
            continue
        i = bisect.bisect_right(starts, e.time_range.start) - 1
        st = ranges[i][2] if i >= 0 and e.time_range.start < ranges[i][1] else "other"
        out[st][e.name] = out[st].get(e.name, 0.0) + e.time_range.elapsed_us() / 1e3
    return out


def tag(obj, attr: str, label: str) -> None:
    """Runs obj.attr under a profiler range named label (instrumentation of this script only)."""
    fn = getattr(obj, attr)

    def wrapped(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)
    setattr(obj, attr, wrapped)


def timed(gen, run, repeats: int) -> dict:
    """Wall time and per-scale times (medians of `repeats`), peak allocated and reserved."""
    torch.cuda.reset_peak_memory_stats()
    walls, scales = [], []
    for rep in range(repeats):
        t = time.perf_counter()
        r = run(2 + rep)
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t)
        scales.append(r.timings["scales_s"])
    return {"generation_s": statistics.median(walls),
            "per_scale_s": [statistics.median(s[i] for s in scales) for i in range(len(scales[0]))],
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2 ** 30}


def profiled(run, top_n: int) -> dict:
    """One eager generation under torch.profiler: kernel time by stage, the blocks' by family."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        run(9)
        torch.cuda.synchronize()
    kt = kernel_times(prof)
    fams = {}
    for name, ms in kt["blocks"].items():
        fams[family(name)] = fams.get(family(name), 0.0) + ms
    return {"stage_range_ms": kt["range_ms"],
            "stage_kernel_ms": {st: sum(kt[st].values()) for st in STAGES + ("other",)},
            "block_families_ms": fams,
            "top_block_kernels_ms": [[n[:160], ms] for n, ms in sorted(kt["blocks"].items(), key=lambda kv: -kv[1])[:top_n]],
            "top_other_kernels_ms": [[n[:160], ms] for n, ms in sorted(kt["other"].items(), key=lambda kv: -kv[1])[:5]]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--modes", default="w4a4_kv8,bf16")
    ap.add_argument("--settings", default="512:0,512:1024,2048:1024,512:4096,2048:4096",
                    help="comma list of chunk_tokens:graph_max_tokens to time (graph_max_tokens 0: graphs off)")
    ap.add_argument("--profile-chunks", default="512,2048", help="chunk_tokens values profiled (eager)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    cfg = dataclasses.replace(get_config("infinity_8b"), depth=a.depth, block_chunks=1)
    T0 = time.perf_counter()
    res = {"device": torch.cuda.get_device_name(), "depth": a.depth, "size": a.size, "timed": {}, "profiled": {}}

    def save():
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
    for mode in a.modes.split(","):
        gen = build(mode, "bf16", "cuda", cfg=cfg)
        if mode == "w4a4_kv8":
            from var_gen_ros.quant.api import Int8KVCacheFactory
            gen.kv_cache_factory = Int8KVCacheFactory(calibrate_static_kv(gen, 512, 512))
        print(f"[{time.perf_counter() - T0:.0f} s] {mode} built", flush=True)
        feats = tuple(f.to(gen.device) for f in gen.encode_text(PROMPT, None, True))
        run = lambda s: gen.generate(PROMPT, seed=s, height=a.size, width=a.size, text_features=feats)  # noqa: E731
        for setting in a.settings.split(","):
            chunk, gmax = (int(v) for v in setting.split(":"))
            gen.chunk_tokens, gen.cuda_graphs, gen.graph_max_tokens = chunk, gmax > 0, max(gmax, 1)
            gen.release_graphs()
            torch.cuda.empty_cache()
            gen.warmup(2 if gmax else 1, PROMPT, height=a.size, width=a.size)   # tuning, graph capture
            key = f"{mode}/chunk{chunk}/graphs{gmax}"
            r = res["timed"][key] = timed(gen, run, a.repeats)
            print(f"[{time.perf_counter() - T0:.0f} s] {key}: generation {r['generation_s'] * 1e3:.1f} ms, last scales "
                  f"{[round(v * 1e3, 1) for v in r['per_scale_s'][-4:]]} ms, peak {r['peak_allocated_gib']:.2f} GiB "
                  f"(reserved {r['peak_reserved_gib']:.2f})", flush=True)
            save()
        gen.cuda_graphs = False
        gen.release_graphs()
        torch.cuda.empty_cache()
        tag(gen.model, "run_blocks", "blocks")
        tag(gen.model, "logits", "head")
        tag(gen, "decode", "vae")
        for chunk in (int(c) for c in a.profile_chunks.split(",") if c):
            gen.chunk_tokens = chunk
            run(1)
            key = f"{mode}/chunk{chunk}"
            p = res["profiled"][key] = profiled(run, a.top)
            print(f"\n== {key} (eager, profiled): GPU range ms " + ", ".join(f"{k} {v:.1f}" for k, v in p["stage_range_ms"].items())
                  + "; kernel ms " + ", ".join(f"{k} {v:.1f}" for k, v in p["stage_kernel_ms"].items()), flush=True)
            blocks_ms = max(p["stage_kernel_ms"]["blocks"], 1e-9)
            for fam, ms in sorted(p["block_families_ms"].items(), key=lambda kv: -kv[1]):
                print(f"  {fam:22} {ms:9.2f} ms  {ms / blocks_ms:6.1%} of block kernels")
            for n, ms in p["top_block_kernels_ms"]:
                print(f"    {ms:9.2f} ms  {n[:110]}")
            for n, ms in p["top_other_kernels_ms"]:
                print(f"    other {ms:9.2f} ms  {n[:100]}")
            save()
        del gen, run
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
