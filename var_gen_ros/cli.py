"""`var-gen`: command-line entry to the runtime (no ROS needed).

    var-gen generate --prompt "a red circle on a white background" --out out.png [--bundle DIR]
    var-gen convert --model-type infinity_2b --transformer infinity_2b_reg.pth \
        --vae infinity_vae_d32reg.pth --text-encoder flan-t5-xl/ --out bundles/infinity_2b
    var-gen random-bundle --config tiny --out DIR       (random weights of a config's real shapes)
    var-gen info --bundle DIR
    var-gen quantize --bundle DIR --out DIR/w4a4 [--rank 32 --group 64 --kv int8 --kv-scales static]
    var-gen diagnose --bundle DIR [--json out.json]
    var-gen eval-default [--prompts 50] [--quantization w4a4 --kv-cache int8] [--text-encoder int4]   (checker accuracy)
    var-gen train-default --out DIR --workdir DIR      (trains the embedded default model; GPU)
    var-gen warm-cache --params-file config/gen.yaml --params-file config/edge_8b.yaml -p bundle_path:=B \
        -p kernel_cache_dir:=D [--sizes 1024x1024,768x1344] [--runs 2] [--export-picks orin.json]
        (fill the kernel cache before a first start; --export-picks: the GPU's autotuning picks as a kernels/tuned/ table)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def default_bundle_path() -> str:
    """The embedded default model shipped inside the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "default_bundle")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"device {name!r} requested but CUDA is not available")
    return name


def cmd_generate(a) -> int:
    from .infinity import Generator
    from .infinity.checkpoint import CheckpointError
    bundle = a.bundle or default_bundle_path()
    device = resolve_device(a.device)
    try:
        gen = Generator.from_bundle(bundle, device=device, dtype=DTYPES[a.dtype])
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = gen.generate(a.prompt, seed=a.seed, cfg=a.cfg, negative_prompt=a.negative_prompt,
                       height=a.height, width=a.width, top_k=a.top_k, top_p=a.top_p)
    import cv2
    cv2.imwrite(a.out, res.image[:, :, ::-1])
    print(json.dumps({"out": a.out, "size": list(res.image.shape), "seed": res.seed, "bundle": bundle,
                      "timings": {k: v for k, v in res.timings.items() if k != "scales_s"}}, indent=1))
    return 0


def cmd_convert(a) -> int:
    from .infinity.checkpoint import load_official_checkpoint, load_official_vae, save_bundle
    from .infinity.config import get_config
    from .infinity.model import Infinity
    from .infinity.text import check_text_encoder_dir
    from .infinity.vae import BSQVAE
    cfg = get_config(a.model_type)
    check_text_encoder_dir(a.text_encoder)
    with torch.device("meta"):
        model, vae = Infinity(cfg), BSQVAE(cfg.vae)
    model.to_empty(device="cpu")
    vae.to_empty(device="cpu")
    load_official_checkpoint(a.transformer, cfg, model)
    load_official_vae(a.vae, vae)
    if a.dtype != "fp32":
        model.to(DTYPES[a.dtype])
    save_bundle(a.out, cfg, model, vae, text_encoder_dir=a.text_encoder,
                extra={"name": a.name or cfg.name, "sources": {"transformer": os.path.basename(a.transformer),
                                                               "vae": os.path.basename(a.vae)}})
    print(f"wrote bundle {a.out}")
    return 0


def cmd_random_bundle(a) -> int:
    from .infinity.config import get_config
    from .infinity.tiny import make_random_bundle
    make_random_bundle(a.out, get_config(a.config), seed=a.seed)
    print(f"wrote random-weight bundle {a.out} ({a.config})")
    return 0


def cmd_info(a) -> int:
    from .infinity.checkpoint import read_bundle_config
    from .infinity.config import InfinityConfig
    meta = read_bundle_config(a.bundle or default_bundle_path())
    cfg = InfinityConfig.from_dict(meta["model"])
    print(json.dumps({**meta, "params": cfg.num_params()}, indent=1))
    return 0


def _quant_config(a):
    from .quant import QuantConfig
    kw = dict(rank=a.rank, group=a.group, kv=a.kv, kv_scales=a.kv_scales)
    if a.alphas:
        kw["alphas"] = tuple(float(x) for x in a.alphas.split(","))
    return QuantConfig(**kw)


def _calib_prompts(a):
    if not a.prompts:
        return None
    with open(a.prompts) as f:
        return [ln.strip() for ln in f if ln.strip()]


def _load_for_quant(a):
    from .infinity import Generator
    return Generator.from_bundle(a.bundle or default_bundle_path(), device=resolve_device(a.device),
                                 dtype=DTYPES[a.dtype])


def cmd_quantize(a) -> int:
    from .quant import quantize_, save_quantized
    gen = _load_for_quant(a)
    rep = quantize_(gen, _quant_config(a), _calib_prompts(a))
    out = a.out or os.path.join(a.bundle or default_bundle_path(), "w4a4")
    save_quantized(gen, out)
    sq = [r["out_sqnr_db"] for r in rep.layers if r["out_sqnr_db"] is not None]
    print(json.dumps({"out": out, "layers": len(rep.layers), "transformer_bytes_before": rep.bytes_before,
                      "transformer_bytes_after": rep.bytes_after, "kv": rep.kv, "kv_scales": rep.kv_scales,
                      "min_out_sqnr_db": min(sq) if sq else None,
                      "mean_out_sqnr_db": sum(sq) / len(sq) if sq else None}, indent=1))
    return 0


def cmd_diagnose(a) -> int:
    from .quant.diagnose import diagnose, format_table
    gen = _load_for_quant(a)
    d = diagnose(gen, _quant_config(a), _calib_prompts(a), layer_filter=a.layers)
    print(format_table(d))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(d, f, indent=1)
    return 0


def cmd_eval_default(a) -> int:
    import statistics
    import time
    from .checker import check
    from .infinity import Generator
    from .quant.runtime import apply_precision, apply_text_encoder
    from .shapes import held_out_prompts
    bundle = a.bundle or default_bundle_path()
    gen = Generator.from_bundle(bundle, device=resolve_device(a.device), dtype=DTYPES[a.dtype])
    precision = apply_precision(gen, a.quantization, a.kv_cache, bundle, log=lambda m: print(m, file=sys.stderr))
    precision += ", " + apply_text_encoder(gen, a.text_encoder)
    prompts = held_out_prompts(a.prompts)
    oks, times, fails = [], [], {}
    for i, p in enumerate(prompts):
        t = time.perf_counter()
        r = gen.generate(p, seed=a.seed + i)
        times.append(time.perf_counter() - t)
        res = check(r.image, p)
        oks.append(res.ok)
        for f in res.failures:
            fails[f.split(" ")[0]] = fails.get(f.split(" ")[0], 0) + 1
    out = {"bundle": bundle, "precision": precision, "prompts": len(prompts), "accuracy": sum(oks) / len(oks),
           "failures_by_kind": fails, "latency_median_s": statistics.median(times), "device": str(gen.device)}
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def _add_quant_args(q):
    q.add_argument("--bundle", default=None, help="bundle directory (default: the embedded default model)")
    q.add_argument("--device", default="auto")
    q.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    q.add_argument("--rank", type=int, default=32)
    q.add_argument("--group", type=int, default=64)
    q.add_argument("--kv", default="int8", choices=("int8", "none"))
    q.add_argument("--kv-scales", default="static", choices=("static", "dynamic"))
    q.add_argument("--alphas", default=None, help="comma-separated smoothing strengths to search")
    q.add_argument("--prompts", default=None, help="calibration prompts, one per line (default: built-in list)")


def cmd_warm_cache(a) -> int:
    """gen_node's generator, built from its parameter files as the node builds it, run `runs` times at each size so
    that Triton's kernels are compiled and autotuned (and the CUDA extension built) into the kernel cache before
    the node's first start; prints the cache's contents before and after and the seconds of each run."""
    from .kernel_cache import kernel_cache_status
    from .product import DEFAULTS, build_generator, parse_overrides, read_params_files
    try:
        settings = {**DEFAULTS, **read_params_files(a.params_file), **parse_overrides(a.param)}
        sizes = ([tuple(int(v) for v in wh.lower().split("x")) for wh in a.sizes.split(",")] if a.sizes else
                 [(settings["width"] or None, settings["height"] or None)])
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.export_picks and not resolve_device(settings["device"]).startswith("cuda"):
        print("error: --export-picks writes the picks Triton made on a GPU; this run has none "
              f"(device {settings['device']!r})", file=sys.stderr)
        return 2
    if a.export_picks:   # tune every key here: a key seeded from a shipped table is never tuned nor cached
        os.environ["VAR_GEN_TUNED_PICKS"] = "0"
    from .infinity.config import schedule_for
    built = build_generator(settings, log=lambda m: print(m, file=sys.stderr),
                            warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    try:
        for w, h in sizes:               # every size first: a size the model cannot make runs nothing
            schedule_for(built.generator.cfg, h, w, None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs = a.runs if a.runs is not None else max(int(settings["warmup_runs"]), 1)
    out = []
    for w, h in sizes:
        times = built.generator.warmup(runs, width=w, height=h, cfg=settings["cfg"] or None)
        out.append({"width": w, "height": h, "seconds": [round(t, 3) for t in times]})
    after = kernel_cache_status()
    from .quant.dispatch import kernel_status
    # the kernels' state after the runs: on a GPU, how many launch configurations came from a shipped table and how
    # many keys were tuned here
    report = {"device": built.device, "precision": built.precision, "runs": out, "kernels": kernel_status(),
              "kernel_cache_before": built.kernel_cache, "kernel_cache_after": after}
    if a.export_picks:   # this GPU's picks as a table to ship in kernels/tuned/ (kernels/tuned_picks.py)
        from .quant.dispatch import kernel_module
        tp = kernel_module("tuned_picks")
        dev = torch.device(built.device)
        table = tp.table_from_archive(after["triton_cache"], torch.cuda.get_device_name(dev),
                                      torch.cuda.get_device_capability(dev), note="var-gen warm-cache --sizes "
                                      + ",".join(f"{w}x{h}" for w, h in sizes))
        with open(a.export_picks, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
            f.write("\n")
        report["exported_picks"] = {"path": a.export_picks, "ship_as": f"kernels/tuned/{tp.table_name(table['device'])}",
                                    "keys": {k: len(v) for k, v in table["picks"].items()}}
    print(json.dumps(report, indent=1))
    return 0


def main(argv=None) -> int:
    from .quant.runtime import TEXT_ENCODER_MODES
    p = argparse.ArgumentParser(prog="var-gen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="prompt -> PNG")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--out", default="out.png")
    g.add_argument("--bundle", default=None, help="bundle directory (default: the embedded default model)")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cfg", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.set_defaults(fn=cmd_generate)
    c = sub.add_parser("convert", help="official checkpoints -> bundle")
    c.add_argument("--model-type", required=True)
    c.add_argument("--transformer", required=True, help="infinity_2b_reg.pth or the infinity_8b_weights/ directory")
    c.add_argument("--vae", required=True)
    c.add_argument("--text-encoder", required=True, help="local flan-t5-xl directory")
    c.add_argument("--out", required=True)
    c.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    c.add_argument("--name", default=None)
    c.set_defaults(fn=cmd_convert)
    r = sub.add_parser("random-bundle", help="bundle with random weights of a config's shapes")
    r.add_argument("--config", default="tiny")
    r.add_argument("--out", required=True)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(fn=cmd_random_bundle)
    i = sub.add_parser("info", help="print a bundle's config")
    i.add_argument("--bundle", default=None)
    i.set_defaults(fn=cmd_info)
    q = sub.add_parser("quantize", help="SVDQuant W4A4 + INT8 KV: calibrate, quantize, save")
    _add_quant_args(q)
    q.add_argument("--out", default=None, help="output directory (default: BUNDLE/w4a4)")
    q.set_defaults(fn=cmd_quantize)
    d = sub.add_parser("diagnose", help="outliers, SQNR before/after smoothing and low-rank, KV statistics")
    _add_quant_args(d)
    d.add_argument("--layers", default=None, help="only layers matching this pattern")
    d.add_argument("--json", default=None)
    d.set_defaults(fn=cmd_diagnose)
    e = sub.add_parser("eval-default", help="checker accuracy of the default model on held-out prompts")
    e.add_argument("--bundle", default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    e.add_argument("--prompts", type=int, default=50)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--quantization", default="bf16", choices=("bf16", "w4a4"))
    e.add_argument("--kv-cache", default="bf16", choices=("bf16", "int8"))
    e.add_argument("--text-encoder", default="bf16", choices=TEXT_ENCODER_MODES)
    e.add_argument("--json", default=None)
    e.set_defaults(fn=cmd_eval_default)
    w = sub.add_parser("warm-cache", help="compile and autotune the GPU kernels gen_node will run, into its kernel cache")
    w.add_argument("--params-file", action="append", default=[], help="gen_node parameter YAML (repeatable, in order)")
    w.add_argument("-p", "--param", action="append", default=[], help="name:=value over the files (repeatable)")
    w.add_argument("--sizes", default=None, help="WxH[,WxH...] (default: the width/height parameters)")
    w.add_argument("--runs", type=int, default=None, help="generations per size (default: warmup_runs, at least 1)")
    w.add_argument("--export-picks", default=None, metavar="FILE",
                   help="then write this GPU's autotuning picks as a table for kernels/tuned/ (GPU only; the "
                        "shipped tables are not used in this run, so that every kernel is tuned here)")
    w.set_defaults(fn=cmd_warm_cache)
    t = sub.add_parser("train-default", help="train the embedded default model (see var_gen_ros/train_default.py)",
                       add_help=False)
    t.set_defaults(fn=None)
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "train-default":
        from .train_default import main as train_main
        return train_main(argv[1:])
    a = p.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
