"""Launch a Triton kernel's compiled binary directly, once Triton has compiled (and, for an autotuned
kernel, tuned) it for a call's specialization.

Why: Triton's Python launch path binds and specializes every argument on every call, and an autotuned
kernel adds its key lookup: ~50-100 µs of host time per launch on the H100's host against 10-40 µs of
GPU time for a small scale's W4A4 GEMM (bench/host_overhead.py, docs/BENCHMARKS.md). Eager generation
issues thousands of them per image, so the small scales were bound by the host.

How: the first call with a given specialization key goes through Triton (compiling and tuning as
usual); the compiled kernel, the tuned config's launch grid and the argument tail (constexprs and
tuned meta-parameters) are kept. Later calls with the same key call the kernel's launcher with the
same argument order Triton's own `JITFunction.run` uses.

The key holds everything Triton specializes on: every scalar argument's exact value (Triton
specializes ints on == 1 and on divisibility by 16), every tensor's dtype and whether its address is
16-byte aligned, the keyword arguments, and the device. Set VAR_GEN_FAST_LAUNCH=0 to always take
Triton's path (and in Triton's CPU interpreter, which has no compiled kernels, it always is).
"""
from __future__ import annotations

import inspect
import os

import torch
import triton
from triton import knobs
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

ENABLED = os.environ.get("VAR_GEN_FAST_LAUNCH", "1") != "0" and os.environ.get("TRITON_INTERPRET", "0") != "1"


class Launcher:
    """`Launcher(kernel)(grid, args, kwargs)` == `kernel[grid](*args, **kwargs)` for a `@triton.jit` or
    `@triton.autotune` kernel; `grid` a tuple or a function of the arguments and meta-parameters."""

    def __init__(self, fn):
        self.fn = fn
        self.tuned = isinstance(fn, Autotuner)
        self.cache = {}
        self.hits = 0            # calls that took the direct launch (tests read it)
        if not ENABLED:          # the interpreter's kernels are not JITFunctions
            return
        jit = fn
        while not isinstance(jit, JITFunction):
            jit = jit.fn
        self.names = list(jit.arg_names)
        self.defaults = {p.name: p.default for p in jit.params if p.default is not inspect.Parameter.empty}

    def _key(self, args, kwargs):
        k = [driver_device()]
        for a in args:
            if isinstance(a, torch.Tensor):
                k.append((a.dtype, a.data_ptr() & 15 == 0))
            else:
                k.append(a)
        k.extend(kwargs.items())
        return tuple(k)

    def __call__(self, grid, args: tuple, kwargs: dict):
        if not ENABLED or _hooked():
            return self.fn[grid](*args, **kwargs)
        key = self._key(args, kwargs)
        hit = self.cache.get(key)
        if hit is not None:
            kernel, g, tail = hit
            self.hits += 1
            stream = triton.runtime.driver.active.get_current_stream(key[0])
            kernel.run(g[0], g[1], g[2], stream, kernel.function, kernel.packed_metadata, None, None, None,
                       *args, *tail)
            return kernel
        kernel = self.fn[grid](*args, **kwargs)
        if kernel is None or not hasattr(kernel, "packed_metadata"):
            return kernel
        meta = dict(zip(self.names, args))
        meta.update(kwargs)
        if self.tuned:
            meta.update(self.fn.best_config.kwargs)
        for n in self.names:
            if n not in meta:
                meta[n] = self.defaults[n]
        g = grid(meta) if callable(grid) else grid
        g = tuple(g) + (1,) * (3 - len(g))
        self.cache[key] = (kernel, g, [meta[n] for n in self.names[len(args):]])
        return kernel


def _hooked() -> bool:
    """A launch hook is installed (Triton's profiler): take Triton's path, which calls it. Triton 3.6 keeps
    the hooks as (usually empty) chains; older versions as None or a function."""
    h = knobs.runtime.launch_enter_hook
    return h is not None and bool(getattr(h, "calls", True))


def driver_device() -> int:
    return triton.runtime.driver.active.get_current_device()
