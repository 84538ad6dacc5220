"""VAR_GEN_AUTOTUNE_FIRST=1: every autotuned kernel takes the first of the candidates its pruning leaves, with no
trials. For GPU tests on a fresh machine, not for use.

Why: a tuner's trials cost about 8 s per tuning key on the H100 (w4a4_gemm_triton._autotuned), and a tiny test
model's eager generations meet dozens of keys that no shipped table holds (kernels/tuned/ is keyed by the 8B model's
shapes). The parking tests' W4A4 generations on the tiny model took 52 s for one test on a fresh H100, and in the
thirty-fifth session one of them ran past a 170 s limit before the tests after it could run. Every candidate is
checked against the reference on the GPU (test/test_kernels_gpu.py), so the first one computes what the tuned one
does, within the kernels' tolerance; only its speed differs, and the tests that use this compare two generators that
both run it."""
from __future__ import annotations

import os

FIRST_ONLY = os.environ.get("VAR_GEN_AUTOTUNE_FIRST", "0") == "1"


def first_if_asked(configs: list) -> list:
    """`configs` (what a tuner's pruning kept), or only its first one with VAR_GEN_AUTOTUNE_FIRST=1."""
    return list(configs)[:1] if FIRST_ONLY else configs


def prune_first_if_asked(configs, named_args, **kwargs):
    """An early_config_prune for tuners that prune nothing else."""
    return first_if_asked(configs)
