"""The qkv epilogue inside the W4A4 GEMM against the GEMM's bf16 output then the epilogue kernel, in
one process: the 8B W4A4 + INT8-KV generator of bench/edge_proof.py at 1024² with CFG, under the cap,
the setting switched back and forth (graphs recaptured each time), each run's per-scale times. Eager
scales vary by tens of ms between machines and runs (docs/BENCHMARKS.md, twelfth session), so the
comparison alternates in one process instead of comparing separate runs.

    python3 bench/qkv_ab.py [--rounds 2] [--chunk-tokens 1024] [--json out.json]
"""
import argparse
import json
import os
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from edge_proof import GIB, PROMPT, build, calibrate_static_kv      # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk-tokens", type=int, default=1024)
    ap.add_argument("--graph-max-tokens", type=int, default=1024)
    ap.add_argument("--cap-gib", type=float, default=14.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from var_gen_ros.quant import dispatch
    from var_gen_ros.quant.api import Int8KVCacheFactory
    gen = build("w4a4_kv8", "int8", "cuda")
    gen.chunk_tokens = a.chunk_tokens
    gen.cuda_graphs, gen.graph_max_tokens, gen.graph_keep_kv = True, a.graph_max_tokens, True
    gen.kv_cache_factory = Int8KVCacheFactory(calibrate_static_kv(gen, 512, 512))
    dispatch._load()
    gemm = dispatch._STATE["w4a4_module"]
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, a.cap_gib * GIB / torch.cuda.get_device_properties(0).total_memory))
    rows = []
    for rnd in range(a.rounds):
        for fused in (True, False):
            gemm.QKV_EPILOGUE = fused
            gen.release_graphs()
            torch.cuda.empty_cache()
            gen.warmup(2, PROMPT, cfg=3.0, height=1024, width=1024)
            torch.cuda.reset_peak_memory_stats()
            for rep in range(a.repeats):
                r = gen.generate(PROMPT, seed=rep, cfg=3.0, height=1024, width=1024)
                row = {"round": rnd, "qkv_in_gemm": fused, "total_s": r.timings["total_s"],
                       "scales_ms": [round(t * 1e3, 2) for t in r.timings["scales_s"]],
                       "peak_gib": torch.cuda.max_memory_allocated() / GIB}
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = {}
    for fused in (True, False):
        rs = [r for r in rows if r["qkv_in_gemm"] == fused]
        summary["in_gemm" if fused else "separate"] = {
            "total_s_median": statistics.median(r["total_s"] for r in rs),
            "scales_ms_median": [statistics.median(r["scales_ms"][i] for r in rs) for i in range(len(rs[0]["scales_ms"]))],
            "peak_gib": max(r["peak_gib"] for r in rs)}
    print(json.dumps(summary), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "chunk_tokens": a.chunk_tokens, "rows": rows,
                       "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
