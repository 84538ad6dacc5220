"""Edge proof: the whole Infinity-8B pipeline (T5-XL-shaped encoder, transformer, KV cache, BSQ-VAE
decoder) at 1024x1024 with CFG under a hard GPU memory cap, bf16 vs W4A4 vs W4A4 + INT8 KV.

Random weights of the official shapes (real weights cannot be downloaded here). The W4A4 transformer
is built directly in its quantized form (W4A4Linear modules made on the meta device, filled on the
GPU), so the bf16 weights never exist: that is how a 16 GB device must load it. Every mode runs in
its own process (own CUDA context, own cap). The product code paths are used unchanged: Generator,
W4A4Linear / Int8KVCache with the kernels dispatched as the node does, apply_text_encoder.

Per mode: peak allocated / reserved per stage (text encoder, each scale, VAE decode), the resident
components (weights by module, KV cache, scale state) checked against the allocator, latency per
stage and per scale, each scale's floor (max of FLOPs / peak rate and bytes / bandwidth), at
1024x1024 and the other resolutions asked for.

    python3 bench/edge_proof.py --cap-gib 14 --modes bf16,w4a4,w4a4_kv8 --text-encoder int4 \
        --resolutions 1024x1024,512x512,768x1344 --json out.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from var_gen_ros.infinity import BSQVAE, Generator, Infinity, get_config     # noqa: E402
from var_gen_ros.infinity.tiny import random_init_                           # noqa: E402
from var_gen_ros.memory import (AllocationMeter, device_memory_used, process_memory,  # noqa: E402
                                reserved_by_pool, resident_check, trim_host_memory)

GIB = 2 ** 30
_T0 = time.perf_counter()


def progress(msg: str) -> None:
    """A timestamped line on stderr as each phase starts or ends: a run killed at its time limit (the JSON is written
    only at the end) still shows how far it got, down to the calibration generation's last finished scale."""
    print(f"[edge +{time.perf_counter() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)
PROMPT = "a photo of a red robot in a green field under a blue sky"
# new prompts of other token counts than PROMPT's, as a robot's commands would come (other_prompt_runs)
OTHER_PROMPTS = ("a red robot", "a photo of a yellow cup on a wooden table", "two green apples in a white bowl next to a window")
# H100 rates measured in earlier sessions (docs/BENCHMARKS.md): cuBLAS bf16 ≈ 770 TFLOP/s, device memory
# ≈ 3.0 TB/s. The floors use the rates each run measures on its own GPU (`measure_device_rates`; an H200 or an
# Orin is not an H100); these are the fallback where a run has none. The same rates serve every mode (W4A4's
# large-M GEMMs run on INT8 / fp16 tensor cores, its small-M ones are weight-bandwidth-bound)
PEAK_FLOPS = 770e12
PEAK_BW = 3.0e12


def cuda_event_ms(fn, repeats: int) -> list:
    """`repeats` calls of fn, each timed on the GPU by a pair of CUDA events: milliseconds each."""
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return times


def measure_device_rates(device="cuda", n: int = 8192, copy_bytes: int = 1 << 29, repeats: int = 10) -> dict:
    """This GPU's bf16 matmul rate (an n x n x n torch.matmul: cuBLAS) and device-memory bandwidth (a copy of
    copy_bytes: read + written), the median of `repeats` timed with CUDA events after a warm-up. Its buffers
    are freed and the cache emptied, so a run's peaks do not include them."""
    import statistics as st

    def timed(fn):
        fn()
        torch.cuda.synchronize(device)
        return st.median(cuda_event_ms(fn, repeats)) / 1e3

    x = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    y = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    mm_s = timed(lambda: torch.matmul(x, y))
    del x, y
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src))
    del src, dst
    torch.cuda.empty_cache()
    return {"bf16_matmul_flops": 2 * n ** 3 / mm_s, "memory_bytes_per_s": 2 * copy_bytes / copy_s,
            "matmul_n": n, "copy_bytes": copy_bytes}


# ---------------------------------------------------------------- building
def random_w4a4_(model: torch.nn.Module, seed: int) -> None:
    """Random W4A4Linear buffers with the statistics of the random bf16 init (weight std 1/sqrt(K))."""
    from var_gen_ros.quant import W4A4Linear
    from var_gen_ros.quant.int4 import WEIGHT_UNIT_BITS, round_up_bits
    g = torch.Generator(device=next(model.buffers()).device).manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, W4A4Linear):
                K, dev = m.in_features, m.qweight.device
                m.qweight.copy_(torch.randint(0, 256, m.qweight.shape, generator=g, device=dev, dtype=torch.uint8))
                # two-level scales (quant.int4.two_level), as the quantizer makes: a unit of 4 significant
                # bits per output channel times an integer in [1, 16] per group
                target = torch.rand(m.wscales.shape, generator=g, device=dev) * 0.1 / K ** 0.5 + 0.17 / K ** 0.5
                unit = round_up_bits(target.amax(-1, keepdim=True) / 16, WEIGHT_UNIT_BITS)
                m.wscales.copy_(unit * torch.ceil(target / unit).clamp(1, 16))
                m.smooth.fill_(1.0)
                m.lora_down.normal_(0, K ** -0.5, generator=g)
                m.lora_up.normal_(0, 0.02, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0, 0.02, generator=g)


def build_transformer(model_name: str, quantized: bool, device: str, seed: int = 0, cfg=None) -> Infinity:
    from var_gen_ros.quant import QuantConfig, W4A4Linear
    from var_gen_ros.quant.api import _set_module, selected_layers
    cfg = cfg or get_config(model_name)
    qc = QuantConfig()
    with torch.device("meta"):
        model = Infinity(cfg)
        if quantized:
            for name, mode in selected_layers(model, qc).items():
                lin = model.get_submodule(name)
                _set_module(model, name, W4A4Linear(lin.in_features, lin.out_features, lin.bias is not None,
                                                    qc.rank, qc.group, 4 if mode == "w4a4" else None,
                                                    torch.bfloat16, device="meta"))
    model = model.to(torch.bfloat16).to_empty(device=device)
    random_init_(model, seed)
    if quantized:
        random_w4a4_(model, seed)
    return model.eval().requires_grad_(False)


def build(mode: str, text_encoder: str, device: str, model_name: str = "infinity_8b", cfg=None) -> Generator:
    """The pipeline in `mode` with random weights; `cfg` overrides the named config (e.g. fewer blocks)."""
    from bench.pipeline import build_text_encoder
    from var_gen_ros.quant.runtime import apply_text_encoder
    cfg = cfg or get_config(model_name)
    model = build_transformer(model_name, mode != "bf16", device, cfg=cfg)
    with torch.device("meta"):
        vae = BSQVAE(cfg.vae)
    vae = vae.to(torch.bfloat16).to_empty(device=device)
    random_init_(vae, 1)
    vae.eval().requires_grad_(False)
    te = build_text_encoder(device, torch.bfloat16, tempfile.mkdtemp(), 2)
    gen = Generator(model, vae, te, device=device, name=f"{model_name}-random-{mode}")
    gen.text_encoder_mode = apply_text_encoder(gen, text_encoder)
    return gen


@contextlib.contextmanager
def offloaded_w4a4_8b(directory: str = "."):
    """Infinity-8B W4A4 + INT8 KV with the INT4 text encoder on the GPU (random weights), its run-once weights
    offloaded (`offload_dir`) to a new directory under `directory` (a disk, not a tmpfs); the files removed after.
    What bench/condition_reload.py and bench/offload_reads.py measure."""
    gen = build("w4a4_kv8", "int4", "cuda")
    d = tempfile.mkdtemp(dir=directory)
    try:
        gen.offload_to_disk(d)
        yield gen
    finally:
        gen.close_parked()
        shutil.rmtree(d, ignore_errors=True)


def write_json(path: str, out) -> None:
    """`out` as indented JSON at `path` ("" or None: nothing)."""
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


def calibrate_static_kv(gen: Generator, height: int, width: int) -> list:
    """Static INT8 KV scales from one generation (what `var-gen quantize` stores in a bundle)."""
    from var_gen_ros.quant.api import static_kv_scales
    from var_gen_ros.quant.kv_int8 import KVStatsRecorder
    stats = [dict() for _ in range(gen.cfg.depth)]
    old = gen.kv_cache_factory
    gen.kv_cache_factory = lambda *a, layer=0, **k: KVStatsRecorder(*a, stats=stats[layer])
    try:
        gen.generate(PROMPT, seed=123, height=height, width=width,
                     callback=lambda ev: progress(f"calibration {height}x{width}: scale {ev.index + 1}/{ev.total} done"))
    finally:
        gen.kv_cache_factory = old
    return static_kv_scales(stats)


# ---------------------------------------------------------------- measuring
def scale_floors(gen: Generator, schedule, batch: int, kv_bytes_per_token: float, rates: dict = None) -> list:
    """Per scale: FLOPs (per-token Linears + self-attention) and bytes (weights once + KV read), and the
    floor max(FLOPs / peak rate, bytes / bandwidth) in seconds, at `rates` (measure_device_rates) or, without,
    the H100's (PEAK_FLOPS, PEAK_BW)."""
    peak_flops = rates["bf16_matmul_flops"] if rates else PEAK_FLOPS
    peak_bw = rates["memory_bytes_per_s"] if rates else PEAK_BW
    from var_gen_ros.quant import W4A4Linear
    lin_macs = 0
    for name, m in gen.model.named_modules():
        per_token = not any(t in name for t in ("mat_kv", "text_", "ada_lin"))   # these run once per prompt
        if isinstance(m, (torch.nn.Linear, W4A4Linear)) and per_token:
            lin_macs += m.in_features * m.out_features
    # the weights each scale reads: not the layers that read only the text (once per prompt, before the scales;
    # counted in every scale before the thirtieth session, 0.66 GiB too many at 8B W4A4), nor parked ones
    text_only = gen.condition_layers()
    once = {id(t) for t in list(text_only.parameters()) + list(text_only.buffers())}
    wbytes = sum(t.numel() * t.element_size() for t in list(gen.model.parameters()) + list(gen.model.buffers())
                 if id(t) not in once and t.device.type != "meta")
    c = gen.cfg
    out, seen = [], 0
    for L in schedule.token_counts:
        seen += L
        flops = 2 * batch * L * lin_macs + 4 * batch * c.num_heads * L * seen * c.head_dim * c.depth
        nbytes = wbytes + kv_bytes_per_token * seen
        out.append({"tokens": L, "flops": flops, "bytes": nbytes,
                    "floor_s": max(flops / peak_flops, nbytes / peak_bw)})
    return out


ALLOCATOR_EVENTS = ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_sync_all_streams")


def measure(gen: Generator, meter: AllocationMeter, height: int, width: int, cfg: float, repeats: int,
            rates: dict = None) -> dict:
    """Runs of one resolution: stage latencies and per-stage peaks, and the resident components at
    every scale boundary against the allocator."""
    weights = gen.weight_bytes()
    runs = []
    # the caching allocator's own counters over the measured runs: a retry (an allocation that failed at
    # the cap, freed the cache and tried again) and a device malloc/free each synchronize the GPU, which
    # turns an eager scale host-bound
    alloc0 = {k: torch.cuda.memory_stats().get(k, 0) for k in ALLOCATOR_EVENTS}
    for rep in range(repeats):
        meter.reset_peak()
        t0 = time.perf_counter()
        feats = gen.encode_text(PROMPT, None, True)            # the prompt-embedding cache's input
        torch.cuda.synchronize()
        te_s, te_peak = time.perf_counter() - t0, meter.peak()
        feats = tuple(f.to(gen.device) for f in feats)
        # weights + cached prompt features (+ the KV caches kept for the CUDA graphs, which the scale
        # events count again as the KV cache)
        kept_kv = gen.kept_kv_bytes()
        base = meter.allocated() - kept_kv
        stage, checks = [], []

        reserved = [meter.peak_reserved()]

        def on_scale(ev):
            torch.cuda.synchronize()
            stage.append(meter.peak())
            reserved.append(meter.peak_reserved())
            checks.append({"scale": ev.index, **resident_check(meter, sum(weights.values()), ev.resident_bytes,
                                                                base - sum(weights.values()))})
            meter.reset_peak()

        r = gen.generate(PROMPT, seed=rep, cfg=cfg, height=height, width=width, text_features=feats, callback=on_scale)
        vae_peak = meter.peak()
        reserved.append(meter.peak_reserved())
        runs.append({"peak_reserved": max(reserved), "text_encoder_s": te_s, "text_encoder_peak": te_peak, "base_allocated": base,
                     "scales_s": r.timings["scales_s"], "vae_decode_s": r.timings["vae_decode_s"],
                     "condition_s": r.timings["condition_s"],
                     "total_s": r.timings["total_s"] + te_s, "scale_peaks": stage, "vae_decode_peak": vae_peak,
                     "kv_cache_bytes": r.memory["kv_cache_bytes"], "checks": checks, "schedule": r.schedule,
                     "kept_kv_at_start": kept_kv})
    allocator = {k: torch.cuda.memory_stats().get(k, 0) - v for k, v in alloc0.items()}
    # what else the process holds: device memory outside PyTorch's allocator (CUDA context, cuBLAS/cuDNN
    # workspaces, Triton's modules) and host memory. A Jetson's CPU and GPU share one DRAM, so there all
    # three come out of the same 16 GB (an estimate from this machine: the Orin's context and libraries
    # are not the H100's)
    host = process_memory()
    non_pytorch = device_memory_used(torch.cuda.current_device())["non_pytorch"]
    med = statistics.median
    last = runs[-1]
    n = len(last["scales_s"])
    sched = last["schedule"]
    kv_per_token = last["kv_cache_bytes"] / max(1, sched.cached_tokens)
    floors = scale_floors(gen, sched, 2, kv_per_token, rates)
    per_scale = [med([r["scales_s"][i] for r in runs]) for i in range(n)]
    lat = {"text_encoder": med([r["text_encoder_s"] for r in runs]),
           "condition": med([r["condition_s"] for r in runs]),
           "transformer": med([sum(r["scales_s"]) for r in runs]),
           "vae_decode": med([r["vae_decode_s"] for r in runs]),
           "total": med([r["total_s"] for r in runs]), "per_scale": per_scale,
           "per_scale_each_run": [r["scales_s"] for r in runs]}
    lat["share"] = {k: lat[k] / lat["total"] for k in ("text_encoder", "transformer", "vae_decode")}
    peaks = {"text_encoder": max(r["text_encoder_peak"] for r in runs),
             "scales": [max(r["scale_peaks"][i] for r in runs) for i in range(n)],
             "vae_decode": max(r["vae_decode_peak"] for r in runs)}
    peak = max(peaks["text_encoder"], max(peaks["scales"]), peaks["vae_decode"])
    worst = max(last["checks"], key=lambda c: abs(c["unaccounted"]))
    resident_at_last = last["checks"][-1]
    return {
        "resolution": [height, width], "scales": [list(s) for s in sched.scales], "repeats": repeats,
        "latency_s": lat,
        "floor_s": [f["floor_s"] for f in floors], "floor_total_s": sum(f["floor_s"] for f in floors),
        "transformer_vs_floor": lat["transformer"] / sum(f["floor_s"] for f in floors),
        "per_scale_vs_floor": [t / f["floor_s"] for t, f in zip(per_scale, floors)],
        "memory_bytes": {
            "weights": weights, "weights_total": sum(weights.values()),
            "kv_cache": last["kv_cache_bytes"], "prompt_features_and_base": last["base_allocated"] - sum(weights.values()),
            "kept_kv_at_start": last["kept_kv_at_start"],
            "peak_allocated": peak, "peak_by_stage": peaks,
            # what the cap limits; also what a replayed CUDA graph uses: its activations live in the
            # graph's memory pool, which the allocated counter no longer sees once captured
            "peak_reserved": max(r["peak_reserved"] for r in runs),
            "activations_at_peak": peak - resident_at_last["components"],
            "accounting_worst": worst,
            "device_non_pytorch": non_pytorch, "host_rss": host.get("rss"), "host_peak_rss": host.get("peak_rss"),
            "host_rss_anon": host.get("rss_anon"), "host_rss_file": host.get("rss_file"),
            # what must stay resident: the file pages (mapped libraries) can be dropped and read again
            "unified_estimate": max(r["peak_reserved"] for r in runs) + non_pytorch + host.get("rss_anon", 0),
        },
        "allocator_events": allocator,
        # after the last measured run, per memory pool: the graphs' pool's free bytes are its replays'
        # temporaries, the default pool's are cache and fragmentation
        "reserved_by_pool": reserved_by_pool(gen.memory_pools()),
    }


def _new_prompt_stages(gen: Generator, height: int, width: int, cfg: float, seeds, before=None):
    """Generations of PROMPT as a new prompt (the prompt cache and the kept condition dropped first; then `before()`,
    if given), one per seed: (their summary: end-to-end seconds, the text and condition stages' medians, the
    allocated peak; the first image)."""
    cuda = gen.device.type == "cuda"
    runs, first = [], None
    for seed in seeds:
        gen.forget_prompts()
        if before is not None:
            before()
        r = gen.generate(PROMPT, seed=seed, cfg=cfg, height=height, width=width)
        if cuda:
            torch.cuda.synchronize()
        runs.append((r.timings["total_s"], r.timings["text_encoder_s"], r.timings["condition_s"],
                     r.memory.get("peak_allocated")))
        first = r.image if first is None else first
    med = lambda i: statistics.median(x[i] for x in runs)
    return {"total_s": [x[0] for x in runs], "total_s_median": med(0), "text_encoder_s_median": med(1),
            "condition_s_median": med(2), "peak_allocated": max(x[3] for x in runs) if cuda else None}, first


def new_prompt_runs(gen: Generator, height: int, width: int, cfg: float, repeats: int) -> dict:
    """A new prompt through generate as the node calls it: the prompt cache and the kept condition dropped before each
    run (Generator.forget_prompts), so generate encodes the prompt and computes its condition itself; with the text
    encoder and the text-only layers offloaded, the latter's read runs beside the encoder's compute
    (ParkedWeights.prefetch). The measured runs above encode first and give generate the features, which loads the
    two one after the other. End-to-end seconds, the text and condition stages, the allocated peak and the loads."""
    parked = gen.parked_weights()
    loads0 = {k: (p.loads, p.prefetched) for k, p in parked.items()}
    out, _ = _new_prompt_stages(gen, height, width, cfg, [200 + rep for rep in range(repeats)])
    return {**out, "loads": {k: p.loads - loads0[k][0] for k, p in parked.items()},
            "prefetched": {k: p.prefetched - loads0[k][1] for k, p in parked.items()}}


def other_prompt_runs(gen: Generator, height: int, width: int, cfg: float) -> dict:
    """New prompts of other token counts than the warm-up's, each once, through generate: the CUDA graphs are kept
    per text length, and the text is padded to a multiple of text.TOKEN_MULTIPLE tokens so that such prompts replay
    the graphs the warm-up captured instead of capturing their own (VAR_GEN_TEXT_TOKEN_MULTIPLE=1: exact lengths).
    End-to-end seconds of each, their token counts, and the text lengths the scales' graphs were captured for
    before and after."""
    from var_gen_ros.infinity import text
    lengths = lambda: sorted(gen._graphs.condition) if gen._graphs is not None else []
    before, totals = lengths(), []
    for i, p in enumerate(OTHER_PROMPTS):
        gen.forget_prompts()
        r = gen.generate(p, seed=500 + i, cfg=cfg, height=height, width=width)
        if gen.device.type == "cuda":
            torch.cuda.synchronize()
        totals.append(r.timings["total_s"])
    return {"total_s": totals, "total_s_median": statistics.median(totals), "token_multiple": text.TOKEN_MULTIPLE,
            "token_counts": [gen.text_encoder.token_count(p) for p in OTHER_PROMPTS],
            "text_lengths_before": before, "text_lengths_after": lengths()}


def preloaded_prompt_runs(gen: Generator, height: int, width: int, cfg: float, repeats: int,
                          anywhere: bool = False) -> dict:
    """A new prompt after the engine's preload (VAR_GEN_OFFLOAD_PRELOAD: with nothing queued, the text encoder and
    the condition layers loaded into the kept KV caches' dead block, Generator.preload_text_weights), as a robot's
    next request finds them after an idle moment: the prompts forgotten, the preload done and waited for, then
    generate timed. Then the same prompt and seed without the preload: the same image, bit for bit? Empty where
    nothing is offloaded or the preload cannot be done here (no kept caches' block; `anywhere`: preload_text_weights's,
    for the CPU)."""
    parked = gen.parked_weights()
    if not parked or not gen.preload_text_weights(anywhere=anywhere):     # (can it be done here at all?)
        return {}
    gen.end_preload()
    cuda = gen.device.type == "cuda"
    loads0 = {k: p.loads for k, p in parked.items()}
    preload_s = []

    def preload():
        t = time.perf_counter()
        gen.preload_text_weights(anywhere=anywhere)
        if cuda:
            torch.cuda.synchronize()
        preload_s.append(time.perf_counter() - t)
    out, first = _new_prompt_stages(gen, height, width, cfg, [400 + rep for rep in range(repeats)], before=preload)
    loads = {k: p.loads - loads0[k] for k, p in parked.items()}
    _, again = _new_prompt_stages(gen, height, width, cfg, [400])
    return {**out, "preload_s_median": statistics.median(preload_s), "loads": loads,
            "same_image_without_preload": bool((first == again).all())}


def levers_check(gen: Generator, height: int, width: int, cfg: float) -> dict:
    """With the text encoder's graphs (VAR_GEN_TEXT_GRAPHS) or the condition layers' read beside the encoder
    (VAR_GEN_OFFLOAD_PREFETCH) on: a new prompt generated with them (eager, captured, replayed: three times), then the
    same prompt and seed with both off (the encoder eager with its 2-D mask, the loads one after the other), in this
    process at this model's size. Both are to give the same image, bit for bit; a difference is reported, not raised,
    so that the run's timings still come back. Empty where both are off."""
    from var_gen_ros.infinity import sampler
    on = {"text_graphs": sampler.TEXT_GRAPHS, "prefetch": sampler.OFFLOAD_PREFETCH}
    if not any(on.values()):
        return {}
    prompt = PROMPT + ", seen from above"        # a new prompt: the runs before had other features
    # with the levers three times: a token count the encoder's graphs have not seen runs eagerly, is captured (and
    # replayed) the second time and replayed the third; the last is compared
    images = []
    try:
        for levers in (True, True, True, False):
            sampler.TEXT_GRAPHS = on["text_graphs"] and levers
            sampler.OFFLOAD_PREFETCH = on["prefetch"] and levers
            gen.forget_prompts()
            images.append(torch.as_tensor(gen.generate(prompt, seed=300, cfg=cfg, height=height,
                                                       width=width).image).to(torch.int16))
    finally:
        sampler.TEXT_GRAPHS, sampler.OFFLOAD_PREFETCH = on["text_graphs"], on["prefetch"]
    a, b = images[2], images[3]
    return {**on, "same_image": bool(torch.equal(a, b)), "max_abs_diff": int((a - b).abs().max()),
            "pixels_differing": int((a != b).any(-1).sum()),
            "runs_with_levers_agree": all(torch.equal(images[0], x) for x in images[1:3])}


def repeated_prompt_runs(gen: Generator, height: int, width: int, cfg: float, repeats: int) -> dict:
    """The warm-up's prompt again, through generate as the node calls it: its features in the prompt cache, and with
    offloaded weights its condition kept after one unmeasured run, so only the VAE is read (a robot asking for the
    same thing again). The measured runs above give every run new text features instead. End-to-end seconds and the
    allocated peak."""
    cuda = gen.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # once unmeasured: the runs before gave other features, so the kept condition is not this prompt's yet
    gen.generate(PROMPT, seed=99, cfg=cfg, height=height, width=width)
    loads0 = {k: p.loads for k, p in gen.parked_weights().items()}
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for rep in range(repeats):
        t = time.perf_counter()
        gen.generate(PROMPT, seed=100 + rep, cfg=cfg, height=height, width=width)
        sync()
        times.append(time.perf_counter() - t)
    return {"total_s": times, "total_s_median": statistics.median(times),
            "peak_allocated": torch.cuda.max_memory_allocated() if cuda else None,
            "peak_reserved": torch.cuda.max_memory_reserved() if cuda else None,
            "loads": {k: p.loads - loads0[k] for k, p in gen.parked_weights().items()}}


def child(a) -> dict:
    dev = "cuda"
    mode = a.child
    at_start = process_memory()                                    # python, torch and this package imported
    out = {"mode": mode, "cap_gib": a.cap_gib, "text_encoder": a.text_encoder, "device": torch.cuda.get_device_name()}
    torch.empty(1, device=dev)
    if a.memory_sites:      # every allocation's Python stack from here on (slower: a diagnosis run's)
        torch.cuda.memory._record_memory_history(max_entries=100000, stacks="python")
    out["host_memory"] = {"at_start": at_start, "after_cuda_init": process_memory()}
    # this GPU's own rates for the floors, before anything else is on it
    out["device_rates"] = measure_device_rates(dev)
    t = time.perf_counter()
    progress(f"{mode}: building")
    gen = build(mode, a.text_encoder, dev)
    progress(f"{mode}: built")
    out["host_memory"]["after_build"] = process_memory()
    if a.chunk_tokens >= 0:
        gen.chunk_tokens = a.chunk_tokens
    out["chunk_tokens"] = gen.chunk_tokens
    gen.cuda_graphs = bool(a.cuda_graphs)
    gen.graph_max_tokens = a.graph_max_tokens
    gen.graph_keep_kv = bool(a.graph_keep_kv)
    gen.decode_in_kv_memory = bool(a.decode_in_kv_memory)
    warm = 2 if gen.cuda_graphs else 1      # the first run autotunes, the second captures the graphs
    if a.offload_dir:
        from var_gen_ros.product import offload_to_disk
        gen.text_encoder_mode += ", " + offload_to_disk(gen, a.offload_dir)
    if a.text_encoder == "cpu":
        # Orin's 16 GB is shared: an encoder moved off the GPU still occupies the same memory there
        out["host_resident_model_bytes"] = gen.weight_bytes()["text_encoder"]
    if mode == "w4a4_kv8":
        from var_gen_ros.quant.api import Int8KVCacheFactory
        gen.kv_cache_factory = Int8KVCacheFactory(calibrate_static_kv(gen, 512, 512))
    out["build_s"] = time.perf_counter() - t
    out["text_encoder_mode"] = gen.text_encoder_mode
    from var_gen_ros.quant.dispatch import kernel_status
    out["kernels"] = kernel_status()
    progress(f"{mode}: kernels: {out['kernels']}")
    meter = AllocationMeter(dev)
    res = [tuple(int(v) for v in r.split("x")) for r in a.resolutions.split(",")]
    torch.cuda.empty_cache()
    if mode == "bf16":   # its real peak first, uncapped: it cannot run under the cap
        progress(f"{mode}: warm-up {res[0][0]}x{res[0][1]} (uncapped)")
        gen.warmup(warm, PROMPT, cfg=a.cfg, height=res[0][0], width=res[0][1])
        progress(f"{mode}: measuring {res[0][0]}x{res[0][1]} (uncapped)")
        out["uncapped"] = measure(gen, meter, res[0][0], res[0][1], a.cfg, a.repeats, out["device_rates"])
        # the node's paths too, so that a quantized mode's "new prompt" and "same prompt" lines have their bf16 pair
        out["uncapped"]["new_prompt"] = new_prompt_runs(gen, res[0][0], res[0][1], a.cfg, a.repeats)
        out["uncapped"]["repeated_prompt"] = repeated_prompt_runs(gen, res[0][0], res[0][1], a.cfg, a.repeats)
        out["uncapped"]["other_prompts"] = other_prompt_runs(gen, res[0][0], res[0][1], a.cfg)
        out["uncapped"]["cuda_graphs"] = gen.graph_status()
        out["uncapped"]["levers_check"] = levers_check(gen, res[0][0], res[0][1], a.cfg)
        gen.release_graphs()
        torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, a.cap_gib * GIB / total))
    torch.cuda.reset_peak_memory_stats()
    out["resident_after_build"] = torch.cuda.memory_allocated()
    out["runs"] = []
    for h, w in res:
        try:
            progress(f"{mode}: warm-up {h}x{w}")
            gen.warmup(warm, PROMPT, cfg=a.cfg, height=h, width=w)    # autotuning, cuBLAS, graph capture
            progress(f"{mode}: measuring {h}x{w}")
            out["host_memory"][f"after_warmup_{h}x{w}"] = process_memory()
            # the allocated peak over the warm-up, graph captures included: a replayed graph's temporaries sit in
            # its pool unseen by the allocated counter, but while captured they count (so with every scale
            # graphed this is the live-memory peak the measured runs' allocated peak no longer shows; on a
            # machine that autotunes, the candidates' timing buffers count too)
            warm_peak = torch.cuda.max_memory_allocated()
            r = measure(gen, meter, h, w, a.cfg, a.repeats, out["device_rates"])
            r["warmup_peak_allocated"] = warm_peak
            r["new_prompt"] = new_prompt_runs(gen, h, w, a.cfg, a.repeats)
            r["repeated_prompt"] = repeated_prompt_runs(gen, h, w, a.cfg, a.repeats)
            r["other_prompts"] = other_prompt_runs(gen, h, w, a.cfg)
            r["preloaded_prompt"] = preloaded_prompt_runs(gen, h, w, a.cfg, a.repeats)
            r["cuda_graphs"] = gen.graph_status()
            # last: it turns the encoder's graphs off and on again, and the next runs would find them made anew (the
            # thirty-sixth session's preloaded runs, after it, ran the encoder eagerly once and captured it once)
            r["levers_check"] = levers_check(gen, h, w, a.cfg)
            r["fits"] = True
            progress(f"{mode}: cuda graphs: {r['cuda_graphs']}")
        except torch.cuda.OutOfMemoryError as e:
            r = {"resolution": [h, w], "fits": False, "error": str(e).split("\n")[0][:300],
                 "peak_allocated_before_oom": torch.cuda.max_memory_allocated(), **oom_report(e)}
            gen.release_graphs()
            torch.cuda.empty_cache()
        # the reads of the offloaded weights (the warm-up's included)
        r["offloaded"] = {what: {"bytes": p.nbytes, "loads": p.loads, "load_s_mean": p.load_s / max(1, p.loads),
                                 "prefetched": p.prefetched}
                          for what, p in gen.parked_weights().items()}
        r["kernels"] = kernel_status()     # after the resolution's generations: the keys tuned beyond a shipped table
        progress(f"{mode}: kernels: {r['kernels']}")
        r["memory_trace"] = list(gen.memory_trace)      # (VAR_GEN_MEMORY_TRACE=1) warm-up generations included
        gen.memory_trace.clear()
        out["runs"].append(r)
        out["host_memory"][f"after_{h}x{w}"] = process_memory()
        trim_host_memory()
        out["host_memory"][f"after_{h}x{w}_trimmed"] = process_memory()
        print(json.dumps({"mode": mode, "res": [h, w], "fits": r["fits"],
                          "peak_gib": r.get("memory_bytes", {}).get("peak_allocated", r.get("peak_allocated_before_oom", 0)) / GIB,
                          "total_s": r.get("latency_s", {}).get("total")}), flush=True)
    if a.memory_sites:      # what is live between generations, by the code that allocated it
        from var_gen_ros.memory import live_blocks_by_site
        out["memory_sites"] = live_blocks_by_site(torch.cuda.memory._snapshot(), top=40)
        torch.cuda.memory._record_memory_history(enabled=None)
        for d in out["memory_sites"][:20]:
            progress(f"{mode}: live {d['bytes'] / 2**20:9.1f} MiB in {d['blocks']:5d} blocks ({d['pool']}) {d['site']}")
    # what a managed gen_node's lifecycle cleanup gives back (Engine.release, the node's code), and what the process
    # keeps with no model loaded (its CUDA context, library workspaces, compiled kernels: non_pytorch)
    from var_gen_ros.engine import Engine
    engine = Engine(gen)
    del gen
    if a.cuda_graphs and out["runs"] and out["runs"][-1]["fits"]:
        out["idle_release"] = idle_release_run(engine, res[-1], a.cfg)
        progress(f"{mode}: idle release: {out['idle_release']['status']}; the next request "
                 f"{out['idle_release']['first_after_s']:.3f} s (captures), then {out['idle_release']['replayed_after_s']:.3f} s, "
                 f"against {out['idle_release']['replayed_before_s']:.3f} s before")
    torch.cuda.set_per_process_memory_fraction(1.0)
    out["unload"] = engine.release()
    out["unload"].update({f"device_{k}_after": v for k, v in device_memory_used(dev).items()})
    progress(f"{mode}: unloaded: " + ", ".join(f"{k} {v / GIB:.3f} GiB" for k, v in out["unload"].items()))
    return out


def idle_release_run(engine, hw, cfg: float) -> dict:
    """What gen_node's `idle_release_s` gives back between requests (the engine's own code, under the run's cap) and
    what the request after it costs: one request through the engine (its graphs replay), the idle release, then two
    more (the first captures every scale at once, the second replays). Wall seconds in the engine's worker."""
    from var_gen_ros.engine import DONE, Request
    h, w = hw

    def run(seed: int) -> float:
        r = engine.submit(Request(prompt=PROMPT, seed=seed, cfg=cfg, height=h, width=w))
        r.done_event.wait(600)
        if r.state != DONE:
            raise RuntimeError(f"request {r.request_id}: {r.error}")
        return r.run_s
    out = {"replayed_before_s": run(0)}
    engine.set_idle_release(0.2)
    end = time.monotonic() + 60
    while engine.idle_releases == 0 and time.monotonic() < end:
        time.sleep(0.01)
    out["status"] = engine.idle_release_status()
    engine.set_idle_release(0)
    out["released"] = dict(engine.last_idle_release)
    out["released"].update({f"device_{k}_after": v for k, v in device_memory_used(torch.cuda.current_device()).items()})
    out["first_after_s"] = run(1)
    out["replayed_after_s"] = run(2)
    out["cuda_graphs"] = engine.generator.graph_status()
    return out


def oom_report(e: BaseException) -> dict:
    """Where an out-of-memory happened (the innermost frames of this package) and what held the
    memory: the allocator's segments over 64 MiB, with their pool (0 = the default one, else a CUDA
    graph's or the KV caches' private pool) and how much of each is allocated."""
    import traceback
    frames = [f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in traceback.extract_tb(e.__traceback__)
              if "var_gen_ros" in f.filename or "edge_proof" in f.filename]
    segs = [{"mib": round(sg["total_size"] / 2 ** 20, 1), "allocated_mib": round(sg["allocated_size"] / 2 ** 20, 1),
             "pool": str(sg.get("segment_pool_id", ""))} for sg in torch.cuda.memory_snapshot()
            if sg["total_size"] >= 64 * 2 ** 20]
    return {"oom_frames": frames[-6:], "segments_over_64mib": segs}


def summarize(results: dict) -> None:
    print(f"\n{'mode':10} {'res':>10} {'fits':>5} {'peak GiB':>9} {'resv GiB':>9} {'weights':>8} {'KV':>7} {'act':>6} "
          f"{'total s':>8} {'TE':>6} {'transf.':>8} {'VAE':>6} {'vs floor':>8}")
    for mode, r in results.items():
        rows = ([("uncapped", r["uncapped"])] if "uncapped" in r else []) + [("", x) for x in r["runs"]]
        for tag, x in rows:
            res = "x".join(map(str, x["resolution"])) + ("*" if tag else "")
            if not x.get("fits", True):
                print(f"{mode:10} {res:>10} {'OOM':>5} {x['peak_allocated_before_oom'] / GIB:9.2f}")
                continue
            m, L = x["memory_bytes"], x["latency_s"]
            host = r.get("host_resident_model_bytes", 0)
            print(f"{mode:10} {res:>10} {'yes':>5} {(m['peak_allocated'] + host) / GIB:9.2f} "
                  f"{m.get('peak_reserved', 0) / GIB:9.2f} {m['weights_total'] / GIB:8.2f} "
                  f"{m['kv_cache'] / GIB:7.2f} {m['activations_at_peak'] / GIB:6.2f} {L['total']:8.3f} "
                  f"{L['text_encoder']:6.3f} {L['transformer']:8.3f} {L['vae_decode']:6.3f} {x['transformer_vs_floor']:8.2f}")
    print("(* = bf16 without the cap, to report its real peak; with --text-encoder cpu the peak column adds the\n"
          " encoder's host-resident weights, since Orin's CPU and GPU share one memory)")
    for mode, r in results.items():
        d = r.get("device_rates")
        if d:
            print(f"floors at {mode}'s measured rates: bf16 matmul {d['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s "
                  f"({d['matmul_n']}^3), memory {d['memory_bytes_per_s'] / 1e12:.2f} TB/s (copy of {d['copy_bytes'] >> 20} MiB)")
    print("\nshared-memory estimate (a Jetson's CPU and GPU share its DRAM): GPU reserved peak + device memory "
          "outside PyTorch + host anonymous RSS (+ mapped library pages, which can be dropped)")
    for mode, r in results.items():
        for x in ([r["uncapped"]] if "uncapped" in r else []) + r["runs"]:
            m = x.get("memory_bytes", {})
            if "unified_estimate" in m:
                print(f"  {mode:10} {'x'.join(map(str, x['resolution'])):>10}: {m['peak_reserved'] / GIB:.2f} + "
                      f"{m['device_non_pytorch'] / GIB:.2f} + {(m['host_rss_anon'] or 0) / GIB:.2f} = "
                      f"{m['unified_estimate'] / GIB:.2f} GiB (+ {(m['host_rss_file'] or 0) / GIB:.2f} of library "
                      f"pages; host peak RSS {(m['host_peak_rss'] or 0) / GIB:.2f})"
                      + (f"; allocated peak over the warm-up, captures included: {x['warmup_peak_allocated'] / GIB:.2f}"
                         if "warmup_peak_allocated" in x else ""))
            pools = x.get("reserved_by_pool")
            if pools:
                print("    reserved after the runs, by pool (reserved / allocated / free GiB): " + "; ".join(
                    f"{k} {d['reserved'] / GIB:.2f} / {d['allocated'] / GIB:.2f} / {d['free'] / GIB:.2f}"
                    for k, d in sorted(pools.items(), key=lambda kv: -kv[1]["reserved"])))
            np_ = x.get("new_prompt")
            if np_:
                print(f"    a new prompt through generate: {np_['total_s_median']:.3f} s (text "
                      f"{np_['text_encoder_s_median']:.3f}, condition {np_['condition_s_median']:.3f}), peak "
                      f"{np_['peak_allocated'] / GIB:.2f} GiB allocated"
                      + (f"; offloaded loads {np_['loads']}, read beside the encoder {np_['prefetched']}"
                         if any(np_["loads"].values()) else ""))
            op = x.get("other_prompts")
            if op:
                print(f"    new prompts of other token counts {op['token_counts']} (padded to a multiple of "
                      f"{op['token_multiple']}): " + ", ".join(f"{t:.3f}" for t in op["total_s"])
                      + f" s; the scales' graphs' text lengths {op['text_lengths_before']} -> {op['text_lengths_after']}")
            pp = x.get("preloaded_prompt")
            if pp:
                print(f"    a new prompt after the idle preload: {pp['total_s_median']:.3f} s (text "
                      f"{pp['text_encoder_s_median']:.3f}, condition {pp['condition_s_median']:.3f}; the preload "
                      f"{pp['preload_s_median']:.3f} s before it), peak {pp['peak_allocated'] / GIB:.2f} GiB allocated; "
                      f"loads {pp['loads']}; the same image without the preload: {pp['same_image_without_preload']}")
            lc = x.get("levers_check")
            if lc:
                print(f"    text graphs {lc['text_graphs']}, prefetch {lc['prefetch']} against both off, a new prompt and "
                      f"seed: the same image {lc['same_image']} (max |diff| {lc['max_abs_diff']}, "
                      f"{lc['pixels_differing']} pixels differ; its three runs with them the same image: "
                      f"{lc['runs_with_levers_agree']})")
            rp = x.get("repeated_prompt")
            if rp:
                print(f"    the same prompt again (features cached): {rp['total_s_median']:.3f} s, peak "
                      f"{rp['peak_allocated'] / GIB:.2f} GiB allocated / {rp['peak_reserved'] / GIB:.2f} reserved"
                      + (f"; offloaded loads {rp['loads']}" if rp["loads"] else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="bf16,w4a4,w4a4_kv8")
    ap.add_argument("--cap-gib", type=float, default=14.0, help="GPU memory cap (Orin: 16 GB shared, ~14 usable)")
    ap.add_argument("--text-encoder", default="int4", choices=["bf16", "int8", "int4", "cpu"])
    ap.add_argument("--offload-dir", default="",
                    help="the node's offload_dir: the text encoder's, the condition layers' and the VAE's weights in "
                         "files there, loaded when needed (every measured run encodes and computes its condition "
                         "anew: a new prompt each time)")
    ap.add_argument("--resolutions", default="1024x1024,512x512,768x1344,1344x768")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk-tokens", type=int, default=-1,
                    help="Generator.chunk_tokens: per-token work of larger scales in slices of this many "
                         "positions (0 = whole scale; default: the product's)")
    ap.add_argument("--cuda-graphs", type=int, default=0, choices=(0, 1),
                    help="replay scales of <= --graph-max-tokens tokens as CUDA graphs (the node's cuda_graphs, "
                         "off by default)")
    ap.add_argument("--graph-max-tokens", type=int, default=4096,
                    help="largest scale (tokens) replayed as a graph; 0 keeps the KV caches but captures nothing")
    ap.add_argument("--graph-keep-kv", type=int, default=1, choices=(0, 1),
                    help="with --cuda-graphs 1: keep the KV caches between generations (Generator.graph_keep_kv)")
    ap.add_argument("--decode-in-kv-memory", type=int, default=1, choices=(0, 1),
                    help="with kept KV caches: the VAE decode allocates in their memory while they are dead "
                         "(Generator.decode_in_kv_memory)")
    ap.add_argument("--memory-sites", type=int, default=0, choices=(0, 1),
                    help="record every allocation's stack and report what is live after the runs, by the code "
                         "that made it (memory.live_blocks_by_site); slows the run: for diagnosis only")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/edge_proof.py measures GPU memory and latency: no CUDA device here")
    if a.child:
        with open(a.child_out, "w") as f:
            json.dump(child(a), f, indent=1, default=str)
        return
    results = {}
    for mode in a.modes.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--child-out", path,
               "--cap-gib", str(a.cap_gib), "--text-encoder", a.text_encoder, "--resolutions", a.resolutions,
               "--offload-dir", a.offload_dir, "--memory-sites", str(a.memory_sites),
               "--cfg", str(a.cfg), "--repeats", str(a.repeats), "--chunk-tokens", str(a.chunk_tokens), "--graph-keep-kv", str(a.graph_keep_kv),
               "--decode-in-kv-memory", str(a.decode_in_kv_memory),
               "--cuda-graphs", str(a.cuda_graphs), "--graph-max-tokens", str(a.graph_max_tokens)]
        p = subprocess.run(cmd)
        if p.returncode != 0:
            results[mode] = {"mode": mode, "failed": p.returncode}
            continue
        with open(path) as f:
            results[mode] = json.load(f)
        if a.json:                      # after every mode, so a run cut short keeps what it measured
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
    summarize({k: v for k, v in results.items() if "failed" not in v})


if __name__ == "__main__":
    main()
