"""CUDA graphs of the text encoder's forward, one per (batch, token count), replayed for later prompts of that shape.

Why: the T5-XL encoder runs about two thousand small kernels (24 layers; with INT4 weights a dequantization before
each Linear) whose GPU time is a few ms for a short prompt, but launching them from Python costs tens of ms: the text
stage took 0.027 s on the H100's host (docs/BENCHMARKS.md, thirty-third session), and a Jetson's ARM cores are
slower. A graph replays the whole forward with one launch.

What a graph needs, and how it gets it:
- fixed shapes: each (batch, token count) of a tokenized prompt gets its own graph (the last `MAX_SHAPES` are kept).
  The token count is the prompt's rounded up to `text.TOKEN_MULTIPLE` (TextEncoder.encode pads it, eager or graphed),
  so prompts of different lengths share a graph; at the same padded length a replay gives the eager run's bits;
- fixed addresses: the token ids and the attention mask are copied into the graph's buffers, and the encoder's
  weights must be where they were captured. Their addresses are compared at each use and the graphs are dropped when
  any moved (an offloaded encoder loaded elsewhere; parking.py) or when the module's tensors were replaced;
- nothing on the host inside: given a 2-D mask, transformers' T5 asks `padding_mask.all()` (a sync) to decide whether
  to skip the mask; a 4-D additive mask (0 where a token is, the dtype's lowest value where it is padding) is passed
  through as it is. `additive_mask` makes the values transformers makes, so eager and graphed runs both use it
  (`test_text_graphs.py`: the same bits as the 2-D mask on the CPU);
- warmed up: the first forward of each shape runs eagerly (Triton's compiles and tuning, cuBLAS's handles); the second
  is captured, later ones replay.
A capture that fails for a reason other than memory turns the graphs off for the encoder (warned once); one that runs
out of memory leaves that forward eager and the next one tries again.
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


class TextEncoderGraphs:
    """forward(ids, mask4d) -> float32 features, captured per (B, T) and replayed (see the module's docstring)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.graphs = collections.OrderedDict()     # (B, T) -> (graph, ids buffer, mask buffer, output)
        self.warm = set()                           # shapes that ran eagerly once
        self.capture = True
        self.error = ""
        self.captures = self.replays = 0
        self._pool = None
        self._where = None                          # the weights' addresses the graphs were captured with
        self.moved = 0                              # times the graphs were dropped because the weights moved

    def _addresses(self) -> tuple:
        return tuple(t.data_ptr() for t in list(self.module.parameters()) + list(self.module.buffers()))

    def drop(self) -> None:
        """Every graph and its memory (freed at the next empty_cache); the warm shapes stay warm."""
        self.graphs.clear()
        self._pool = self._where = None

    def status(self) -> str:
        if not self.capture:
            return f"off after a failed capture ({self.error})"
        moved = f", dropped {self.moved}x as the weights moved" if self.moved else ""
        return f"{len(self.graphs)} shapes captured, {self.captures} captures, {self.replays} replays{moved}"

    def run(self, ids: torch.Tensor, mask4d: torch.Tensor, forward: Callable[[torch.Tensor, torch.Tensor],
                                                                           torch.Tensor]) -> torch.Tensor:
        """forward(ids, mask4d) (float32 features), eager the first time its shape runs, captured the second, replayed
        after. Returns a new tensor (the graph's output is copied out: the next replay overwrites it)."""
        key = tuple(ids.shape)
        if ids.device.type != "cuda" or not self.capture:
            return forward(ids, mask4d)
        where = self._addresses()
        if where != self._where:
            # offloaded weights loaded elsewhere than at the capture (a graph holds their addresses): captured again
            self.moved += self._where is not None
            self.drop()
        entry = self.graphs.get(key)
        if entry is not None:
            graph, ib, mb, out = entry
            self.graphs.move_to_end(key)
            ib.copy_(ids)
            mb.copy_(mask4d)
            graph.replay()
            self.replays += 1
            return out.clone()
        if key not in self.warm:
            self.warm.add(key)
            return forward(ids, mask4d)
        try:
            ib, mb = ids.clone(), mask4d.clone()
            graph, out = self._capture(ib, mb, forward)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"[:500]
            graph = None
            if not is_oom(e):
                self.capture = False
                warnings.warn(f"var_gen_ros: CUDA graph capture of the text encoder failed, running it eagerly: "
                              f"{self.error}")
            if not self.graphs:
                self._pool = None
        if graph is None:         # outside the except clause: the failed graph's tensors are freed first
            return forward(ids, mask4d)
        self._where = where
        self.graphs[key] = (graph, ib, mb, out)
        while len(self.graphs) > MAX_SHAPES:
            self.graphs.popitem(last=False)
        self.captures += 1
        graph.replay()            # capturing ran nothing
        self.replays += 1
        return out.clone()

    def _capture(self, ids: torch.Tensor, mask4d: torch.Tensor, forward) -> Tuple["torch.cuda.CUDAGraph", torch.Tensor]:
        hold_rng_registration(ids.device)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = forward(ids, mask4d)
        return graph, out
