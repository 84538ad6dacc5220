"""Kernel 1 (row pass + quantizer) against its K split count S, with the Triton row pass and the CUDA C++ one
(VAR_GEN_W4A4_ROW_PASS_CUDA), side by side in one process: CUDA-graph replay medians, interleaved. The forty-fifth
session's Nsight Compute profile found both row passes at 2048 rows latency-bound (0.57 waves of blocks, 26 % of the
DRAM bandwidth); more splits give more blocks in flight but more low-rank partials to sum.

    python3 bench/row_pass_splits.py --ms 512,2048 --splits 4,8,14,28,56 --json out.json
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "test"))

from bench.edge_proof import write_json          # noqa: E402
from bench.quant_ab import block_inputs, row_pass_settings  # noqa: E402
from bench.w4a4_stages import _ms                # noqa: E402
from kernels_under_test import gemm_module      # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", default="512,2048")
    ap.add_argument("--splits", default="4,8,14,28,56")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    mod = gemm_module()
    names = ("row_pass", "row_pass_cuda")
    rows = []
    with row_pass_settings(mod) as use:
        for K, N, M, layer, x in block_inputs(a.ms):
            G = K // 64
            default = mod._splits(M, G, mod._quantize_launch(M, "mq")[0])
            r = {"K": K, "N": N, "M": M, "default_S": default, "us": {}}
            for S in sorted({min(int(s), G) for s in a.splits.split(",")} | {default}):
                for name in names:                      # compile outside the timed region
                    use(name)
                    mod.quantize_activations(x, layer, i8=True, splits=S)
                t = {}
                for _ in range(2):                      # interleaved twice; the second of each kept
                    for name in names:
                        use(name)
                        t[name] = _ms(lambda: mod.quantize_activations(x, layer, i8=True, splits=S)) * 1e3
                r["us"][S] = t
            rows.append(r)
            print(f"{K:6d}->{N:<6d} M={M:5d} kernel 1 us (triton / cuda row pass) by S, default S={default}: "
                  + "  ".join(f"S={S} {t['row_pass']:5.1f} / {t['row_pass_cuda']:5.1f}" for S, t in r["us"].items()),
                  flush=True)
    write_json(a.json, {"device": torch.cuda.get_device_name(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
