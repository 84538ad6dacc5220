"""Registers, spill bytes and shared memory of the i8w GEMM's and the qkv-epilogue GEMM's tiles, compiled here for a
GPU architecture (Triton's compiler and ptxas, no GPU), with the low-rank epilogue as a tf32x3 dot (Hopper's default)
and as two bf16 dots (`LR_BF16`; sm_80-sm_89's default, VAR_GEN_W4A4_LR_BF16=1 on Hopper). With
VAR_GEN_W4A4_PERSIST=1 in the environment the persistent tiles (`_i8w_persistent`) are among them.

    VAR_GEN_W4A4_PERSIST=1 python3 bench/epilogue_spills.py --arch 90 > spills.txt
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from var_gen_ros.quant.dispatch import kernel_module   # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--match", default="", help="only the variants whose names contain this")
    a = ap.parse_args()
    targets, gemm = kernel_module("targets"), kernel_module("w4a4_gemm_triton")
    print("epilogue | variant | shared bytes | registers | spill bytes (stores + loads) | fits")
    for form, bf16 in (("tf32x3", False), ("bf16 pair", True)):
        gemm.lr_bf16 = lambda arch, bf16=bf16: bf16          # what _gemm_variants reads for the epilogue's form
        for v in targets._gemm_variants(a.arch):
            if ("i8w" in v.name or "qkv" in v.name) and a.match in v.name:
                r = targets.compile_variant(v, a.arch, ptxas_report=True)
                print(f"{form} | {v.name} | {r.get('shared')} | {r.get('registers')} | {r.get('spill_bytes')} | "
                      f"{r.get('fits', r.get('error'))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
