"""The text encoder's weight-only levers at the real Flan-T5-XL shapes (random weights): bytes held and
the error of the prompt features against the unquantized encoder, for `int8` and `int4`
(`apply_text_encoder`, what the node's `text_encoder` parameter and `bench/edge_proof.py` select).

    python3 bench/text_encoder_quant.py [--device cuda] [--json out.json]

Random weights make a 24-layer T5 chaotic (its attention logits are not scaled, so random q·k are large
and softmax picks near one-hot: a small change of any weight flips them), so the script also reports
the unquantized encoder's bf16-against-float32 error: the floor below which its quantization errors
say nothing. A trained encoder's errors are measured on the embedded default model
(`var-gen eval-default --text-encoder int4`).

Also the encode time of each mode, side by side in one process (median of --repeats, synchronized): the
unquantized encoder, INT8, INT4 with its dequantization kernel on a GPU, and INT4 through the PyTorch
reference dequantization (`int4_weight.DEQUANT_KERNEL = False`); on a GPU each also as CUDA graphs
(`TextEncoder.use_graphs`, var_gen_ros/infinity/text_graphs.py; "_graphs"), with whether its features are the eager
run's bits."""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.pipeline import build_text_encoder                  # noqa: E402
from var_gen_ros.quant import int4_weight                      # noqa: E402
from var_gen_ros.quant.runtime import apply_text_encoder       # noqa: E402

PROMPTS = ["a red fox jumping over a wooden fence at sunset, photorealistic",
           "an isometric illustration of a tiny robot watering plants on a balcony",
           "close-up of a steaming cup of coffee on a marble table, morning light"]


class _Holder:                          # what apply_text_encoder reads: .text_encoder
    def __init__(self, te):
        self.text_encoder = te


def nbytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in list(model.parameters()) + list(model.buffers())}.values())


def encode_seconds(te, repeats: int) -> float:
    """Median wall time of one encode of PROMPTS (with their CFG-free batch), after one warm-up call."""
    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    te.encode(PROMPTS)
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        te.encode(PROMPTS)
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def graphed(te, name: str, eager, out: dict, repeats: int) -> None:
    """On a GPU: the encode time with the forward as CUDA graphs (the warm-up call runs eagerly, the first timed one
    captures, the others replay) and whether the features are the eager run's bits."""
    if te.device.type != "cuda":
        return
    te.use_graphs()
    try:
        out["encode_s"][f"{name}_graphs"] = encode_seconds(te, repeats)
        out["graphs_equal_eager"][name] = bool(torch.equal(te.encode(PROMPTS)[0], eager))
        out.setdefault("graphs_status", {})[name] = te.graphs.status() if te.graphs is not None else te._no_graphs
    finally:
        te.use_graphs(False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    base = build_text_encoder(a.device, dtype, tempfile.mkdtemp(), 2)
    ref, _ = base.encode(PROMPTS)
    base_name = "bf16" if dtype == torch.bfloat16 else "fp32"
    out = {"device": a.device, "dtype": a.dtype, "prompts": len(PROMPTS), "tokens": int(ref.shape[1]),
           "bytes": {base_name: nbytes(base.model)}, "encode_s": {base_name: encode_seconds(base, a.repeats)},
           "graphs_equal_eager": {}}
    graphed(base, base_name, ref, out, a.repeats)
    if dtype != torch.float32:
        # the same weights in float32: how far the encoder's own rounding moves its features, the floor
        # against which a weight grid's error means something (random T5 weights are chaotic: T5 does not
        # scale its attention logits, and random q·k make them large)
        te32 = copy.deepcopy(base)
        te32.model.float()
        f32, _ = te32.encode(PROMPTS)
        out["bf16_vs_fp32_rel_error"] = ((ref.float() - f32).norm() / f32.norm()).item()
        print(f"the unquantized encoder in bf16 against float32: feature error {out['bf16_vs_fp32_rel_error']:.4f}", flush=True)
        del te32
    for mode in ("int8", "int4"):
        te = copy.deepcopy(base)
        t = time.perf_counter()
        desc = apply_text_encoder(_Holder(te), mode)
        quant_s = time.perf_counter() - t
        feats, _ = te.encode(PROMPTS)
        rel = ((feats - ref).norm() / ref.norm()).item()
        cos = torch.nn.functional.cosine_similarity(feats.flatten(0, 1), ref.flatten(0, 1), dim=-1)
        out["bytes"][mode] = nbytes(te.model)
        out[mode] = {"applied": desc, "feature_rel_error": rel, "token_cosine_min": cos.min().item(),
                     "token_cosine_mean": cos.mean().item(), "quantize_s": quant_s}
        out["encode_s"][mode] = encode_seconds(te, a.repeats)
        graphed(te, mode, feats, out, a.repeats)
        if mode == "int4":
            int4_weight.DEQUANT_KERNEL = False
            try:
                out["encode_s"]["int4_reference_dequant"] = encode_seconds(te, a.repeats)
                feats_ref, _ = te.encode(PROMPTS)
            finally:
                int4_weight.DEQUANT_KERNEL = True
            out[mode]["kernel_vs_reference_dequant_equal"] = bool(torch.equal(feats, feats_ref))
        print(f"{mode}: {out['bytes'][mode] / 2**30:.3f} GiB, feature error {rel:.4f}, token cosine mean "
              f"{cos.mean().item():.5f} min {cos.min().item():.5f} ({desc})", flush=True)
        del te
    print("encode s (median of %d): " % a.repeats + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in out["encode_s"].items()))
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
