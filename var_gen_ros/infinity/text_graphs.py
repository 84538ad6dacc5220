"""CUDA graphs of the work a new prompt does: the text encoder's forward, and the condition layers' (`PromptGraphs`, one
per (batch, token count) of the prompt, replayed for later prompts of that shape).

Why: the T5-XL encoder runs about two thousand small kernels (24 layers; with INT4 weights a dequantization before
each Linear) whose GPU time is a few ms for a short prompt, but launching them from Python costs tens of ms: the text
stage took 0.027 s on the H100's host (docs/BENCHMARKS.md, thirty-third session), and a Jetson's ARM cores are
slower. The condition (`Infinity.encode_condition`: the text's projections and the 40 blocks' cross-attention K/V,
with W4A4 each a quantization, a row pass and a GEMM) is the same kind of work: 10-23 ms of host time with the W4A4
kernels against under 1 ms of GPU work, 5 ms in bf16 (H100, fifty-first session). A graph replays either with one
launch.

What a graph needs, and how it gets it:
- fixed shapes: each (batch, token count) of a tokenized prompt gets its own graph (the last `max_shapes` are kept).
  The token count is the prompt's rounded up to `text.TOKEN_MULTIPLE` (TextEncoder.encode pads it, eager or graphed),
  so prompts of different lengths share a graph; at the same padded length a replay gives the eager run's bits;
- fixed addresses: the inputs are copied into the graph's buffers, and the weights must be where they were captured.
  Their addresses (the modules' parameters and buffers, and what W4A4 layers derive from them and keep: 1/λ, the
  weight units) are compared at each use and the graphs are dropped when any moved (offloaded weights loaded
  elsewhere; parking.py) or when the modules' tensors were replaced;
- nothing on the host inside: given a 2-D mask, transformers' T5 asks `padding_mask.all()` (a sync) to decide whether
  to skip the mask; a 4-D additive mask (0 where a token is, the dtype's lowest value where it is padding) is passed
  through as it is. `additive_mask` makes the values transformers makes, so eager and graphed runs both use it
  (`test_text_graphs.py`: the same bits as the 2-D mask on the CPU). encode_condition has no sync (the same test);
- warmed up: the first forward of each shape runs eagerly (Triton's compiles and tuning, cuBLAS's handles); the second
  is captured, later ones replay.
A capture that fails for a reason other than memory turns the graphs off (warned once); one that runs out of memory
leaves that forward eager and the next one tries again.
"""
from __future__ import annotations

import collections
import warnings
from typing import Callable, Tuple

import torch

from .graphs import hold_rng_registration, is_oom

MAX_SHAPES = 8     # (batch, tokens) whose graphs are kept, least recently used dropped first


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, 1, T) in `dtype`: 0 where mask is set, the dtype's lowest value where it is not: what transformers adds
    to T5's attention scores for a 2-D padding mask."""
    out = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], dtype=dtype, device=mask.device)
    return out.masked_fill_(~mask.bool()[:, None, None, :], torch.finfo(dtype).min)


def _tensors(out) -> list:
    """The tensors of a forward's output: a tensor, or tuples and lists of them (nested)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _tensors(o)]


def _rebuild(out, it):
    """`out`'s structure with its tensors taken in order from the iterator `it`."""
    if isinstance(out, torch.Tensor):
        return next(it)
    return type(out)(_rebuild(o, it) for o in out)


def kept_tensors(module: torch.nn.Module) -> list:
    """What a forward of `module` reads at fixed addresses: its parameters and buffers, and the values its W4A4 layers
    derive from them and keep (`W4A4Linear.derived_tensors`)."""
    out = list(module.parameters()) + list(module.buffers())
    for m in module.modules():
        derived = getattr(m, "derived_tensors", None)
        if derived is not None:
            out += derived()
    return out


class PromptGraphs:
    """forward(*inputs) captured per input shapes and replayed (see the module's docstring), for `module`'s weights.
    `copy_out`: each call returns new tensors (the graph's outputs copied); without, the graph's own output buffers,
    valid until that shape's next call (the condition: the scales' graphs copy it into their buffers first, and a
    kept condition is only replaced by the next prompt's)."""

    def __init__(self, module: torch.nn.Module, what: str, copy_out: bool = True, max_shapes: int = MAX_SHAPES):
        self.module, self.what, self.copy_out, self.max_shapes = module, what, copy_out, max_shapes
        self.graphs = collections.OrderedDict()     # shapes -> (graph, input buffers, output)
        self.warm = set()                           # shapes that ran eagerly once
        self.capture = True
        self.error = ""
        self.captures = self.replays = 0
        self._pool = None
        self._where = None                          # the weights' addresses the graphs were captured with
        self.moved = 0                              # times the graphs were dropped because the weights moved

    def _addresses(self) -> tuple:
        return tuple(t.data_ptr() for t in kept_tensors(self.module))

    def drop(self) -> None:
        """Every graph and its memory (freed at the next empty_cache); the warm shapes stay warm."""
        self.graphs.clear()
        self._pool = self._where = None

    def status(self) -> str:
        if not self.capture:
            return f"off after a failed capture ({self.error})"
        moved = f", dropped {self.moved}x as the weights moved" if self.moved else ""
        return f"{len(self.graphs)} shapes captured, {self.captures} captures, {self.replays} replays{moved}"

    def _out(self, out):
        return _rebuild(out, (t.clone() for t in _tensors(out))) if self.copy_out else out

    def run(self, forward: Callable, *inputs: torch.Tensor):
        """forward(*inputs), eager the first time its shapes run, captured the second, replayed after."""
        key = tuple(tuple(t.shape) for t in inputs)
        if inputs[0].device.type != "cuda" or not self.capture:
            return forward(*inputs)
        where = self._addresses()
        if where != self._where:
            # weights loaded elsewhere than at the capture (a graph holds their addresses): captured again
            self.moved += self._where is not None
            self.drop()
        entry = self.graphs.get(key)
        if entry is not None:
            graph, bufs, out = entry
            self.graphs.move_to_end(key)
            for b, t in zip(bufs, inputs):
                b.copy_(t)
            graph.replay()
            self.replays += 1
            return self._out(out)
        if key not in self.warm:
            self.warm.add(key)
            return forward(*inputs)
        try:
            bufs = [t.clone() for t in inputs]
            graph, out = self._capture(bufs, forward)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"[:500]
            graph = None
            if not is_oom(e):
                self.capture = False
                warnings.warn(f"var_gen_ros: CUDA graph capture of the {self.what} failed, running it eagerly: "
                              f"{self.error}")
            if not self.graphs:
                self._pool = None
        if graph is None:         # outside the except clause: the failed graph's tensors are freed first
            return forward(*inputs)
        self._where = where
        self.graphs[key] = (graph, bufs, out)
        while len(self.graphs) > self.max_shapes:
            self.graphs.popitem(last=False)
        self.captures += 1
        graph.replay()            # capturing ran nothing
        self.replays += 1
        return self._out(out)

    def _capture(self, bufs: list, forward) -> Tuple["torch.cuda.CUDAGraph", object]:
        hold_rng_registration(bufs[0].device)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = forward(*bufs)
        return graph, out
