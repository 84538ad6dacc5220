"""CUDA graphs of the per-scale transformer pass (40 blocks + head), replayed in later generations.

Why: a small scale (1 to ~1000 tokens) runs a few thousand kernels whose GPU time is a few ms, but
launching them from Python takes ~0.05-0.1 s per scale (measured on the H100, docs/BENCHMARKS.md).
A graph replays the whole scale with one launch.

What a graph needs, and how it gets it:
- every tensor it reads or writes lives at a fixed address: the scale's input (views of one buffer
  that all scales share, since they run one after another), the prompt condition (copied into buffers
  kept per text length), the schedule's RoPE table, and the KV caches. The generator keeps the caches
  between generations (`Generator.graph_keep_kv`; caches made anew rarely came back at the captured
  addresses, and the graphs were recaptured every time). On a GPU they are views of one block of a
  private memory pool, which the VAE decode borrows after the last scale (their memory instead of
  ~2.2 GiB beside it at 1024²) before they are made again in the same block (`Generator._new_caches`).
  `adopt` checks the addresses every generation and drops the graphs if a cache moved;
- fixed shapes: the text length T is part of the cross-attention's shapes, so each T gets its own graphs
  (the last `MAX_TEXT_LENGTHS` are kept). The text encoder pads every prompt, graphs on or off, to a multiple
  of `text.TOKEN_MULTIPLE` tokens (masked), so that prompts of different token counts share one T; graphs on
  or off give the same image;
- nothing on the host mid-scale: sampling (which draws from a seeded generator) and the next scale's
  input stay outside the graph;
- everything warmed up first (Triton autotuning and compiling, cuBLAS handles): a scale is captured
  from its second run on, the first being a plain eager one (a new text length needs no new warm-up:
  no kernel's tuning depends on it).
Only KV caches that say `graph_safe` are used (float, and INT8 with static scales; the dynamic INT8 cache
keeps per-scale scales in Python lists, which a replay would not update).
"""
from __future__ import annotations

import collections
import os
import warnings
from typing import Callable, Dict, List, Tuple

import torch

MAX_TEXT_LENGTHS = 8     # text lengths whose graphs are kept (least recently used dropped first)
# "shared": every graph of a ScaleGraphs captures into one memory pool, so the pool holds the largest scale's
# temporaries instead of the sum of all (each graph's output stays allocated, so no graph's temporaries can
# land on another's output; the graphs never run at the same time, so their temporaries may overlap).
# The default since the fifteenth session: 8B W4A4+KV8 at 1024² on the H100, 10.74 instead of 11.93 GiB
# reserved with the graphed scales as fast, and with every scale graphed (graph_max_tokens 4096) 10.60 GiB
# (docs/BENCHMARKS.md). "per_graph": one pool per graph, the twelfth session's choice after a shared handle
# hit an internal assert of PyTorch 2.11's caching allocator (use_count > 0; what triggered it was not
# recorded). Here the handle is renewed whenever the graphs are dropped together (`adopt`)
GRAPH_POOL = os.environ.get("VAR_GEN_GRAPH_POOL", "shared")
GRAPH_POOLS = ("per_graph", "shared")


def is_oom(e: BaseException) -> bool:
    """Whether e is an out-of-memory error (the allocator's, or a CUDA call's worded so); also the engine's test."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# One never-captured CUDAGraph per device, registered with the device's default CUDA generator for the life of the
# process. Why: the first graph registered with a generator makes it allocate two 8-byte tensors
# (CUDAGeneratorState::register_graph, PyTorch 2.11), after the graph has already recorded the generator; when that
# allocation runs out of memory, the half-made graph's destructor finds itself unregistered, throws, and the process
# aborts (std::terminate, no Python error; found on the H100, twenty-eighth session: the engine capturing under a
# memory cap). With this one always registered, the generator never allocates when a graph is made
_RNG_ANCHORS: Dict[int, "torch.cuda.CUDAGraph"] = {}


def hold_rng_registration(device: torch.device) -> None:
    """Register `device`'s default CUDA generator with a lasting graph, once, while that can fail as a Python
    out-of-memory error: the generator's two tensors are allocated and freed here first (the caching allocator keeps
    the block, so the registration's own allocation reuses it); if they do not fit, OutOfMemoryError is raised here,
    before any graph exists."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index in _RNG_ANCHORS:
        return
    probe = [torch.empty(1, dtype=torch.long, device=torch.device("cuda", index)) for _ in range(2)]
    del probe
    anchor = torch.cuda.CUDAGraph()
    register = getattr(anchor, "register_generator_state", None)   # PyTorch 2.4+; a later one may register lazily
    if register is not None:
        register(torch.cuda.default_generators[index])
    _RNG_ANCHORS[index] = anchor


class ScaleGraphs:
    """The graphs of one (schedule, batch, cache type) and the buffers they read: the RoPE table, each
    scale's input, the prompt condition per text length (the KV caches come with each generation, see
    `adopt`). Scales of more than `max_tokens` tokens run eagerly (there the kernels, not the launches,
    take most of the time)."""

    def __init__(self, key: tuple, rope: torch.Tensor, max_tokens: int, capture: bool = True, pool: str = None):
        self.key = key
        self.pool = pool or GRAPH_POOL                 # "per_graph" | "shared" (see GRAPH_POOL)
        if self.pool not in GRAPH_POOLS:
            raise ValueError(f"graph pool must be one of {GRAPH_POOLS}, got {self.pool!r}")
        self.rope = rope
        self.cache_ptrs: tuple = ()                  # addresses of the KV cache tensors the graphs use
        self.recaptures = 0                          # times the caches moved and the graphs were dropped
        self.max_tokens = int(max_tokens)
        # capture False: the same buffers and call order, never captured (the CPU, and tests)
        self.capture = capture and rope.is_cuda
        self.inputs: Dict[int, torch.Tensor] = {}                 # scale -> input buffer (views of one store)
        self._input_store: torch.Tensor = None
        self.condition: "collections.OrderedDict[int, dict]" = collections.OrderedDict()   # T -> buffers
        self.graphs: Dict[Tuple[int, int], tuple] = {}           # (T, scale) -> (graph, output)
        self.warm: set = set()
        self.error = ""                                          # why capturing stopped, if it did
        # A capture that ran out of memory pauses capturing for the rest of that generation only (`adopt` resumes it
        # at the next): memory is a passing condition on a robot whose other processes share the GPU, and one
        # out-of-memory must not leave the node running eagerly, about twice as slow, for good
        self.paused = False
        self.capture_ooms = 0                                    # captures that ran out of memory
        self.kept_caches: list = None        # the generator's KV caches, when it keeps them (graph_keep_kv)
        self.kv_pool = None                  # the private memory pool they live in (CUDA), lent to the VAE decode
        self.kept_spec = None                # (schedule, batch) the kept caches were made for
        self._pool = None                    # the graphs' shared memory pool handle (GRAPH_POOL "shared")

    def adopt(self, caches: list) -> None:
        """This generation's KV caches: the graphs stay if every cache tensor is where they were captured
        with, else they are dropped (captured again on this run; tuning is not redone)."""
        self.paused = False                  # a new generation: captures that ran out of memory are tried again
        ptrs = tuple(t.data_ptr() for c in caches for t in c.tensors())
        if ptrs != self.cache_ptrs:
            if self.graphs:
                self.recaptures += 1
            self.graphs.clear()
            self._pool = None       # a fresh handle for the new captures (the old graphs' pool dies with them)
            self.cache_ptrs = ptrs

    def bind(self, cond_BD, cond_gss, text_kv, mask) -> Tuple[int, dict]:
        """This generation's condition, copied into the buffers of its text length T (made, and the
        least recently used T dropped, when new). Returns T and the buffers, as encode_condition's."""
        T = mask.shape[1]
        new = {"cond_BD": cond_BD, "cond_gss": cond_gss, "mask": mask, "text_kv": [t for kv in text_kv for t in kv]}
        if T in self.condition:
            self.condition.move_to_end(T)
            buf = self.condition[T]
            for k, v in new.items():
                for dst, src in (zip(buf[k], v) if k == "text_kv" else [(buf[k], v)]):
                    dst.copy_(src)
        else:
            while len(self.condition) >= MAX_TEXT_LENGTHS:
                old, _ = self.condition.popitem(last=False)
                for k in [k for k in self.graphs if k[0] == old]:
                    del self.graphs[k]
            self.condition[T] = {k: ([t.clone() for t in v] if k == "text_kv" else v.clone()) for k, v in new.items()}
        c = self.condition[T]
        kv = c["text_kv"]
        return T, {"cond_BD": c["cond_BD"], "cond_gss": c["cond_gss"], "mask": c["mask"],
                   "text_kv": [(kv[2 * i], kv[2 * i + 1]) for i in range(len(kv) // 2)]}

    def wants(self, tokens: int) -> bool:
        return tokens <= self.max_tokens

    def run(self, T: int, si: int, x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """forward(x) for scale si of a text of length T (forward reads that T's condition buffers):
        eager the first time the scale runs, captured the first time after for each T, replayed after.
        The result of a capture or replay is the graph's output buffer, valid until the scale runs again."""
        if (T, si) in self.graphs:
            graph, out = self.graphs[(T, si)]
            self.inputs[si].copy_(x)
            graph.replay()
            return out
        if si not in self.warm or not self.capture or self.paused:
            self.warm.add(si)
            return forward(x)
        try:                       # the input buffer too: its out-of-memory pauses the capture like the graph's
            if si not in self.inputs:
                self.inputs[si] = self._input_buffer(x)
            buf = self.inputs[si]
            graph, out = self._capture(buf, forward)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"[:500]
            if is_oom(e):          # paused for this generation; the next one captures again
                self.paused, self.capture_ooms = True, self.capture_ooms + 1
                warnings.warn(f"var_gen_ros: CUDA graph capture of scale {si} ran out of memory; this generation runs "
                              f"its remaining scales eagerly, the next one captures again: {self.error}")
            else:                  # something the graph cannot hold: never again for these graphs
                self.capture = False
                warnings.warn(f"var_gen_ros: CUDA graph capture of scale {si} failed, running eagerly: {self.error}")
            graph = None
            if not self.graphs:    # the failed graph was the shared pool's only user: a fresh handle, as in `adopt`
                self._pool = None
        if graph is None:
            # the scale runs eagerly (its cache stores are by position: no double count), outside the except clause,
            # so that the failed capture's graph and tensors, which the exception's frames hold, are freed first
            return forward(x)
        self.graphs[(T, si)] = (graph, out)
        buf.copy_(x)               # capturing ran nothing: the input goes in now
        graph.replay()
        return out

    def _capture(self, buf: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]):
        """(graph, its output buffer): forward(buf) captured. thread_local: the node's other threads (diagnostics,
        ROS callbacks) may touch CUDA meanwhile. The memory pool: see GRAPH_POOL (per graph, the sum of the graphed
        scales' working sets; shared, about the largest one's)."""
        hold_rng_registration(buf.device)      # else an out-of-memory while making the graph aborts the process
        graph = torch.cuda.CUDAGraph()
        if self.pool == "shared" and self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool if self.pool == "shared" else None,
                              capture_error_mode="thread_local"):
            out = forward(buf)
        return graph, out

    def _input_buffer(self, x: torch.Tensor) -> torch.Tensor:
        """x-shaped view of one storage that every graphed scale's input shares, sized for the largest
        graphed scale: scales run one after another, and each copies its input in before its replay, so
        one buffer serves all (at 1024² that is 29 MB instead of 72 MB for scales 0-9)."""
        store = self._input_store
        if store is None or store.dtype != x.dtype or store.numel() < x.numel():
            tokens = max([h * w for h, w in self.key[0] if h * w <= self.max_tokens] + [x.shape[1]])
            store = torch.empty(x.shape[0] * tokens * x.shape[2], dtype=x.dtype, device=x.device)
            self._input_store = store        # views of an older store stay valid for the graphs using them
        return store[:x.numel()].view(x.shape)

    def tensors(self) -> List[torch.Tensor]:
        """The buffers the graphs hold (RoPE, inputs, outputs, conditions); the caches count apart
        (memory accounting)."""
        ts: List[torch.Tensor] = [self.rope, *self.inputs.values(), *(out for _, out in self.graphs.values())]
        for c in self.condition.values():
            ts += [c["cond_BD"], c["cond_gss"], c["mask"], *c["text_kv"]]
        return ts
