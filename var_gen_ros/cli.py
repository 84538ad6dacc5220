"""`var-gen`: command-line entry to the runtime (no ROS needed).

    var-gen generate --prompt "a red circle on a white background" --out out.png [--bundle DIR]
    var-gen convert --model-type infinity_2b --transformer infinity_2b_reg.pth \
        --vae infinity_vae_d32reg.pth --text-encoder flan-t5-xl/ --out bundles/infinity_2b
    var-gen random-bundle --config tiny --out DIR       (random weights of a config's real shapes)
    var-gen info --bundle DIR
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


def main(argv=None) -> int:
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
    a = p.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
