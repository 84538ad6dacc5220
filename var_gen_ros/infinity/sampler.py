"""Next-scale sampling with classifier-free guidance, a KV cache across scales, and previews.

`Generator` is the runtime's public API: `Generator.from_bundle(path, device, dtype)` then
`generate(prompt, seed=..., cfg=..., ...) -> GenerationResult`.
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..memory import reserved_by_pool
from .config import InfinityConfig, ScaleSchedule, schedule_for
from .graphs import GRAPH_POOL, ScaleGraphs, hold_rng_registration
from .kv_cache import KVCache
from .model import Infinity, block_causal_mask, rope_tables
from .prompt_cache import PromptFeatureCache
from .vae import BSQVAE, to_uint8, upsample_codes


class GenerationCancelled(Exception):
    """Raised inside generate() when the `should_stop` callback returns True (checked per scale)."""


@dataclass
class ScaleEvent:
    index: int                      # 0-based scale just finished
    total: int
    progress: float                 # fraction of all tokens generated so far
    elapsed_s: float
    preview: Optional[np.ndarray]   # (H, W, 3) uint8 decode of the codes so far, when asked for
    # bytes the generation holds between scales, by component (kv_cache, scale_state): with the
    # weights, what an allocator should see resident at this point (memory accounting, bench/edge_proof.py)
    resident_bytes: dict = field(default_factory=dict)


@dataclass
class GenerationResult:
    image: np.ndarray               # (H, W, 3) uint8 RGB
    seed: int
    bits: List[torch.Tensor]        # per scale (h, w, d) uint8, the sampled bit labels
    schedule: ScaleSchedule
    timings: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    text_cache_hit: bool = False    # the prompt's features came from the generator's prompt cache


# ---------------------------------------------------------------- sampling
def sample_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """logits (N, V) -> indices (N,). Top-k then nucleus filtering as upstream; the draw is an inverse-CDF
    lookup of one uniform per row so that equal logits give equal samples for a seeded generator."""
    N, V = logits.shape
    logits = logits.float()
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, sorted_idx = logits.sort(dim=-1)
        remove = sorted_logits.softmax(-1).cumsum(-1) <= (1 - top_p)
        remove[:, -1] = False
        logits = logits.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.rand(N, 1, generator=generator, device=logits.device)
    return (cdf < u).sum(-1).clamp_max(V - 1)


def per_scale(value, n: int, name: str) -> List[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * n
    value = [float(v) for v in value]
    if len(value) < n:
        raise ValueError(f"{name}: {len(value)} values for {n} scales")
    return value[:n]


def bits_to_latent(bits: torch.Tensor, cfg: InfinityConfig) -> torch.Tensor:
    """(B, h, w, d) bits of transformer tokens -> (B, d_vae, h', w') codes at the VAE latent grid
    (with spatial patchify, each token's 4*d bits are a 2x2 block of latent pixels)."""
    codes = ((bits.float() * 2 - 1) / (cfg.vae.codebook_dim ** 0.5)).permute(0, 3, 1, 2)
    return F.pixel_shuffle(codes, 2) if cfg.spatial_patchify else codes


def latent_to_tokens(latent: torch.Tensor, cfg: InfinityConfig) -> torch.Tensor:
    """(B, d_vae, h', w') -> (B, h*w, d) transformer inputs."""
    x = F.pixel_unshuffle(latent, 2) if cfg.spatial_patchify else latent
    return x.flatten(2).transpose(1, 2)


def latent_size(scale, cfg: InfinityConfig):
    f = 2 if cfg.spatial_patchify else 1
    return scale[0] * f, scale[1] * f


def teacher_forcing_inputs(bits: Sequence[torch.Tensor], schedule: ScaleSchedule, cfg: InfinityConfig) -> torch.Tensor:
    """Bit labels of scales 0..n-2 -> the transformer inputs of scales 1..n-1 (B, L_total - 1, d), built
    exactly as the sampler builds them (used for training and for the uncached reference)."""
    final = latent_size(schedule.scales[-1], cfg)
    summed, out = 0, []
    for si in range(len(schedule.scales) - 1):
        summed = summed + upsample_codes(bits_to_latent(bits[si], cfg), final)
        out.append(latent_to_tokens(upsample_codes(summed, latent_size(schedule.scales[si + 1], cfg)), cfg))
    return torch.cat(out, dim=1)


def _unique_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views and expands count once)."""
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


# ---------------------------------------------------------------- generator
_HAS_MEM_POOL = hasattr(torch.cuda, "MemPool") and hasattr(torch.cuda, "use_mem_pool")


def free_or_collect(freed: Callable[[], bool]) -> bool:
    """True once `freed()` says the memory is free, running the cyclic garbage collector if it does not
    yet (a full collection costs tens of ms with a model loaded, so only then).

    Why: the kept KV caches' block must be free before the VAE decode borrows its memory pool, else the
    decode grows the pool beside it (~2.9 GiB at 1024² on fresh H100 machines, docs/BENCHMARKS.md). The
    generator asks the allocator (allocated bytes fell by the block's size), not a weak reference to the
    block: inside inference_mode a view keeps no reference to its base tensor, so the base object can die
    while a view still holds the storage."""
    if freed():
        return True
    gc.collect()
    return freed()


def holders_of(ptr: int, limit: int = 12) -> List[str]:
    """What keeps tensors on the storage at address `ptr` alive, as far as Python's garbage collector
    sees: for each such tensor, its shape and its referrers (a frame by function and line, a dict by some
    of its keys and owner). For the warning when the KV block outlives the generation; it walks every
    tracked object, so only then."""
    found, objs = [], gc.get_objects()
    try:
        _describe_holders(ptr, objs, found, limit)
    finally:
        objs.clear()        # it holds this frame, which holds it: no cycle left for the collector
    return found


def _describe_holders(ptr, objs, found, limit):
    for o in objs:
        if len(found) >= limit:
            break
        if not issubclass(type(o), torch.Tensor):      # (isinstance would ask lazy modules' __class__)
            continue
        try:
            if o.untyped_storage().data_ptr() != ptr:
                continue
        except (RuntimeError, NotImplementedError):     # tensors without a plain storage (meta, sparse...)
            continue
        refs = []
        for r in gc.get_referrers(o):
            if r is found or r is objs or type(r).__name__ == "frame" and r.f_code.co_name in ("holders_of", "_describe_holders"):
                continue
            if type(r).__name__ == "frame":
                refs.append(f"frame {r.f_code.co_name}:{r.f_lineno} ({os.path.basename(r.f_code.co_filename)})")
            elif isinstance(r, dict):
                owners = [type(x).__name__ for x in gc.get_referrers(r) if x is not found and x is not objs][:3]
                refs.append(f"dict{list(r)[:4]} of {owners}")
            else:
                refs.append(type(r).__name__ + (f"[{len(r)}]" if hasattr(r, "__len__") else ""))
        found.append(f"{tuple(o.shape)} {o.dtype} held by {refs[:4] or 'no Python object (C++ or a cycle)'}")


def pool_reserved(pool, device=None) -> int:
    """Bytes of the allocator's segments in a torch.cuda.MemPool on `device` (default: the current one), free or
    not: a live pool keeps them."""
    return reserved_by_pool({tuple(pool.id): "pool"}, device).get("pool", {}).get("reserved", 0)


def kv_pool_excess(pool, block_at) -> int:
    """Bytes a torch.cuda.MemPool reserves beyond the kept KV block (`block_at`: its address and bytes, or
    None): every other segment of the pool, and its own segment's rounding. A healthy pool holds the
    block's segment and a 2 MiB one of small blocks; the VAE decode borrows the block itself."""
    ptr, nbytes = block_at or (-1, 0)
    pid, excess = tuple(pool.id), 0
    for s in torch.cuda.memory_snapshot():
        if tuple(s.get("segment_pool_id", ())) != pid:
            continue
        own = s["address"] <= ptr < s["address"] + s["total_size"]
        excess += s["total_size"] - (nbytes if own else 0)
    return excess


# Bytes of a kept KV pool beyond its block above which the pool is made anew (`Generator._renew_kv_pool`)
KV_POOL_SLACK = 32 << 20

# 1: each generation records its KV pool's reserved bytes around the VAE decode (`memory`); costs a
# memory snapshot, so only for diagnosis (bench/device scripts)
MEMORY_TRACE = os.environ.get("VAR_GEN_MEMORY_TRACE", "0") == "1"
# a new prompt with the text encoder and the condition layers both offloaded: the condition layers' read runs on a side
# stream while the encoder computes, in the same lease of the caches' block (Generator._encode_with_condition), so a
# new prompt waits for one read where it waited for two. On by default since the thirty-sixth session, when its GPU
# test of the joint lease passed and, at 8B on the H100, a new prompt gave the same image bit for bit with it and
# without (edge_proof.levers_check). Timed in the thirty-fifth: nothing gained with the eager encoder (1.111 against
# 1.115 s), 1.079 -> 1.055 s with the encoder's graphs (TEXT_GRAPHS). VAR_GEN_OFFLOAD_PREFETCH=0 turns it off.
OFFLOAD_PREFETCH = os.environ.get("VAR_GEN_OFFLOAD_PREFETCH", "1") == "1"
# with cuda_graphs, the text encoder's forward as CUDA graphs too, one per (batch, token count) (text_graphs.py), which
# takes the ~0.025 s of launches off a new prompt's text stage. Timed on the H100 in the thirty-fifth session: the text
# stage 0.033 -> 0.007 s, a new prompt 0.993 -> 0.965 s resident. On by default since the thirty-sixth, when its GPU
# tests (the graphed features against the eager ones, bit for bit; generations with it against without) passed and,
# at 8B, a new prompt gave the same image with it as without in each mode. VAR_GEN_TEXT_GRAPHS=0 turns it off.
TEXT_GRAPHS = os.environ.get("VAR_GEN_TEXT_GRAPHS", "1") == "1"
# with the text encoder and the condition layers offloaded: the Engine loads both into the kept KV caches' dead block
# as soon as it has nothing to run (Generator.preload_text_weights), so that a new prompt finds them loaded and waits
# for no read. Their memory is the caches' block, dead between generations; the next generation lets go of them before
# its first scale. Timed at 8B on the H100 in the thirty-seventh session with both levers above and the encoder's
# graphs replaying: a new prompt 1.053 -> 1.000 s with the edge preset (the text stage 0.044 -> 0.009 s, the condition
# 0.043 -> 0.015 s; the preload itself 0.059 s while idle), the same image, a peak of 7.68 GiB allocated either way;
# its GPU tests (the encoder and the condition layers in the block, the graphs replaying across its loads) passed.
# On by default since; VAR_GEN_OFFLOAD_PRELOAD=0 turns it off.
OFFLOAD_PRELOAD = os.environ.get("VAR_GEN_OFFLOAD_PRELOAD", "1") == "1"
# with cuda_graphs, the condition (Infinity.encode_condition: the text's projections and the 40 blocks' cross-attention
# K/V, once per prompt) as CUDA graphs too, one per (batch, text length) (text_graphs.PromptGraphs), kept for the last
# CONDITION_SHAPES of them: ~37 MB each at 8B for a CFG pair of 32 tokens (the graph's outputs, which the scales' graphs
# copy). Why: on the H100 the stage took 10.3 ms of the host's time with the Triton W4A4 GEMMs, 14.5-22.9 ms with the
# Gluon ones and 5 ms in bf16, for under 1 ms of GPU work (fifty-first session); a Jetson's host is slower. Off until
# its GPU tests have passed and a new prompt has been timed with it (VAR_GEN_CONDITION_GRAPHS=1 turns it on).
CONDITION_GRAPHS = os.environ.get("VAR_GEN_CONDITION_GRAPHS", "0") == "1"
CONDITION_SHAPES = 2


def _pool_bytes(n: int) -> int:
    """What an allocation of n bytes may take of a free block: the caching allocator rounds to 512 bytes, and a block of
    its large pool (from 1 MiB) is split only where over 1 MiB would be left, so those are counted in 2 MiB units."""
    return -(-n // 512) * 512 if n < (1 << 20) else -(-n // (2 << 20)) * (2 << 20)


class _PoolLease:
    """`lease()`: torch.cuda.use_mem_pool of a memory pool, until `end()` (after which the lease holds no reference
    to the pool, whoever still holds the lease)."""

    def __init__(self, pool, index: int):
        self._pool, self._index = pool, index

    def __call__(self):
        if self._pool is None:
            raise RuntimeError("the KV caches' pool is no longer lent")
        return torch.cuda.use_mem_pool(self._pool, self._index)

    def end(self) -> None:
        self._pool = None


class Generator:
    def __init__(self, model: Infinity, vae: BSQVAE, text_encoder, device="cpu",
                 kv_cache_factory: Optional[Callable[..., KVCache]] = None, name: str = "",
                 chunk_tokens: int = 2048, cuda_graphs: bool = False, graph_max_tokens: int = 4096,
                 graph_keep_kv: bool = True):
        self.model, self.vae, self.text_encoder = model, vae, text_encoder
        # scales with more positions than this run their per-token work in slices of this many
        # positions (CrossAttnBlock.forward_chunked): same numbers, a fraction of the activations
        self.chunk_tokens = int(chunk_tokens)
        self.cfg: InfinityConfig = model.cfg
        self.device = torch.device(device)
        self.kv_cache_factory = kv_cache_factory or KVCache
        self.name = name or self.cfg.name
        # CUDA graphs of the scales of at most graph_max_tokens tokens (see graphs.py), kept for the last
        # (schedule, batch)
        self.cuda_graphs = bool(cuda_graphs)
        self.graph_max_tokens = int(graph_max_tokens)
        # the graphs' memory: one pool per graph or one shared by all (graphs.GRAPH_POOL; VAR_GEN_GRAPH_POOL)
        self.graph_pool = GRAPH_POOL
        self._kv_block_at = None                 # (address, bytes) of the kept caches' block (CUDA)
        self.memory_trace: List[dict] = []       # with VAR_GEN_MEMORY_TRACE=1: the KV pool per generation
        # with graphs, keep the KV caches between generations so that the graphs always replay into the
        # same tensors (new caches rarely land at the captured addresses: on the H100 the graphs were
        # recaptured every generation and ran slower than eager); costs the caches' memory between
        # requests and beside the VAE decode
        self.graph_keep_kv = bool(graph_keep_kv)
        # with kept caches on a GPU: the caches live in one block of a private memory pool, which the VAE
        # decoder borrows while they are dead (after the last scale), instead of sitting beside them; the
        # caches are then made again in the same block, at the same addresses (see _new_caches)
        self.decode_in_kv_memory = True
        self._graphs: Optional[ScaleGraphs] = None
        # (graphs key, scales run once) kept by `release_graphs(keep_warm=True)`: the kernels those scales compiled and
        # tuned are still there, so new graphs of the same key capture them without another eager run first
        self._warm_after_release: Optional[tuple] = None
        # the text encoder's outputs for recent prompts (prompt_cache.py); max_entries 0 turns it off
        self.prompt_cache = PromptFeatureCache(16)
        # weights that run once per prompt or generation, kept in files on a disk between uses (offload_to_disk), or
        # None: resident. The text encoder's, the transformer's layers that read only the text (condition_layers),
        # the VAE's; the condition those layers computed for the last prompt is kept while they are offloaded:
        # (prompt key, encode_condition's output)
        self.text_encoder_parked = None
        self.condition_parked = None
        self.vae_parked = None
        self._last_condition = None
        self.condition_graphs = None     # text_graphs.PromptGraphs of encode_condition (CONDITION_GRAPHS)
        # (contextlib.ExitStack holding their loads, the ParkedWeights loaded) while preload_text_weights holds them
        self._preload: Optional[tuple] = None
        self._preload_lock = threading.RLock()
        # True from a generation's taking its KV caches until it lets go of them: an offloaded load must not borrow
        # their block then (left True by a generation that failed midway, which only stops borrowing until the next)
        self._caches_in_use = False
        if self.device.type == "cuda":
            # with graphs off too: Triton's autotuner and the small-M GEMM's tuner time candidates in CUDA graphs of
            # their own, and a process's first graph that runs out of memory while being made aborts it (graphs.py)
            try:
                hold_rng_registration(self.device)
            except torch.cuda.OutOfMemoryError:
                pass               # ScaleGraphs tries again before its first capture
        if text_encoder is not None:
            width = text_encoder.model.config.d_model
            if width != self.cfg.text_channels:
                raise ValueError(f"text encoder width {width} != model text_channels {self.cfg.text_channels}")

    @classmethod
    def from_bundle(cls, path: str, device="cpu", dtype=torch.float32) -> "Generator":
        from .checkpoint import load_bundle
        cfg, model, vae, te, meta = load_bundle(path, device=device, dtype=dtype)
        return cls(model, vae, te, device=device, name=meta.get("name", cfg.name))

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def weight_bytes(self) -> dict:
        """The models' weights where they live now (offloaded ones are in their files: 0 here)."""
        def nbytes(m):
            return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers())
                       if t.device.type != "meta")
        out = {"transformer": nbytes(self.model), "vae": nbytes(self.vae)}
        if self.text_encoder is not None:
            out["text_encoder"] = nbytes(self.text_encoder.model)
        return out

    def condition_layers(self) -> torch.nn.Module:
        """The transformer's layers that read only the text, which encode_condition runs once per prompt and the
        scales never: the pooled-text and cross-attention input projections, the shared AdaLN projection and every
        block's cross-attention K/V projection (0.66 GiB of Infinity-8B's W4A4 weights). A holder module; the
        layers stay where they are in the model."""
        m, holder = self.model, torch.nn.Module()
        for name in ("text_proj_for_sos", "text_proj_for_ca", "shared_ada_lin"):
            holder.add_module(name, getattr(m, name))
        for i, b in enumerate(m.blocks):
            holder.add_module(f"block{i}_ca_mat_kv", b.ca.mat_kv)
        return holder

    def offload_to_disk(self, directory: str, tag: str = "") -> str:
        """The weights that run once per prompt or per generation "run, then freed" (parking.py): the text encoder's
        (loaded for a prompt the prompt cache misses), the condition layers' (for a prompt other than the last one)
        and the VAE's (for the final decode, and for each preview) go to safetensors files in `directory`, named
        with `tag`, and only meta tensors stay. With the CUDA graphs' kept KV caches the loads go into their block
        while it is dead. Call after the precision is applied. Returns what it did, for the precision line."""
        from .parking import ParkedWeights, tmpfs_warning
        if self.parked_weights():
            raise RuntimeError("the weights are offloaded already")
        path = lambda what: os.path.join(directory, f"{what}{tag}.safetensors")
        try:
            if self.text_encoder is not None:
                self.text_encoder_parked = ParkedWeights(self.text_encoder.model, path("text_encoder"))
                self.prompt_cache.clear()
            self.condition_parked = ParkedWeights(self.condition_layers(), path("condition"))
            self.vae_parked = ParkedWeights(self.vae, path("vae"))
        except BaseException:          # (a full disk, say) the ones done go back: all resident, as before the call
            for p in self.parked_weights().values():
                p.restore()
            self.text_encoder_parked = self.condition_parked = self.vae_parked = None
            raise
        warn = tmpfs_warning(path("vae"))
        return (f"offloaded to {directory}: " + ", ".join(f"{name} {p.nbytes / 2**30:.2f} GiB"
                                                           for name, p in self.parked_weights().items())
                + (f"; WARNING: {warn}" if warn else ""))

    def forget_prompts(self) -> None:
        """Drops the cached prompt features and the last prompt's condition: the next generation encodes its prompt
        and computes its condition anew (with offloaded weights: loads the encoder and the text-only layers)."""
        self.prompt_cache.clear()
        self._last_condition = None

    def preload_text_weights(self, anywhere: bool = False) -> bool:
        """The offloaded text encoder and condition layers loaded now, ahead of the next generation (what the Engine
        does when it has nothing to run; VAR_GEN_OFFLOAD_PRELOAD, on by default): with the CUDA graphs' kept KV caches,
        into their block, which is dead until the next generation's first scale, the condition layers read on a side
        stream while the encoder's large tensors are put in. A new prompt then runs both without a read; the next
        generation lets go of them before its first scale (the caches are made again in their block, as after any load),
        whatever its prompt. Returns whether they are loaded; False (nothing done) where nothing is offloaded or the
        kept caches' block cannot hold the encoder's large tensors: a load outside it would add to the memory held
        between requests, which the offload is there to free. Where the block cannot hold both, only the encoder is
        loaded. `anywhere`: load them where there is no such block too (new memory, held until the next generation: a
        machine with memory to spare, or the CPU). Calling it again while they are loaded does nothing."""
        with self._preload_lock:
            if self._preload is not None:
                return True
            te, cond = self.text_encoder_parked, self.condition_parked
            first, then = (te, cond) if te is not None else (cond, None)
            if first is None or not (anywhere or self._lendable(first)):
                return False
            stack = contextlib.ExitStack()
            try:
                ahead = stack.enter_context(self._loaded(first, then=then, prefetch=True))
                loaded = [first]
                if ahead is not None:
                    stack.enter_context(then.loaded(empty_cache=False, prefetched=ahead))
                    loaded.append(then)
            except BaseException:
                stack.close()
                raise
            self._preload = (stack, tuple(loaded))
            return True

    def end_preload(self) -> None:
        """Lets go of what preload_text_weights loaded (the kept caches made again in their block); nothing where
        nothing is preloaded."""
        with self._preload_lock:
            pre, self._preload = self._preload, None
            if pre is not None:
                pre[0].close()

    def preloaded(self) -> tuple:
        """The names of the offloaded weights preload_text_weights holds loaded now."""
        pre = self._preload        # (read once: another thread may let go of it)
        if pre is None:
            return ()
        return tuple(name for name, p in self.parked_weights().items() if p in pre[1])

    def parked_weights(self) -> dict:
        """{what: parking.ParkedWeights} of the offloaded weights."""
        return {name: p for name, p in (("text encoder", self.text_encoder_parked),
                                        ("condition layers", self.condition_parked), ("VAE", self.vae_parked))
                if p is not None}

    def offload_status(self) -> str:
        """What the node reports in diagnostics."""
        parked = self.parked_weights()
        if not parked:
            return "resident"
        pre = self.preloaded()
        return ("; ".join(f"{name} {p.status()}" for name, p in parked.items())
                + (f"; loaded ahead of the next prompt: {', '.join(pre)}" if pre else ""))

    def close_parked(self) -> None:
        """Removes the offloaded weights' files (a lifecycle cleanup: the generator is dropped after), and gives back
        the reads' pinned buffers and threads (staged_read.py; the next load, of any generator, makes them again)."""
        self.end_preload()
        parked = self.parked_weights().values()
        for p in parked:
            p.close()
        if parked:
            from .staged_read import release
            release()

    def warmup(self, runs: int = 2, prompt: str = "warm-up", **kwargs) -> List[float]:
        """`runs` generations thrown away (seconds each): the first autotunes and compiles the GPU
        kernels, the second captures the CUDA graphs; requests after it start fast. kwargs as generate."""
        times = []
        for i in range(int(runs)):
            t = time.perf_counter()
            self.generate(prompt, seed=i, **kwargs)
            times.append(time.perf_counter() - t)
        return times

    def graph_status(self) -> str:
        """What the node reports in diagnostics."""
        if not self.cuda_graphs:
            return "off"
        gr = self._graphs
        if self.device.type != "cuda":
            return "on (no effect on the CPU)"
        if gr is None:
            return "on: nothing captured yet"
        msg = (f"on: {len(gr.graphs)} graph(s) for {len(gr.condition)} text length(s) "
               f"(scales {gr.key[0][0]}..{gr.key[0][-1]} up to {self.graph_max_tokens} tokens, batch {gr.key[1]}, "
               f"{self.graph_pool} memory pool), recaptured {gr.recaptures}x"
               + (", KV caches kept" if gr.kept_caches is not None else ""))
        if gr.capture_ooms:
            msg += f"; {gr.capture_ooms} capture(s) ran out of memory (each retried at the next generation)"
        if not gr.capture and gr.error:
            msg += f"; capture stopped: {gr.error}"
        te = self.text_encoder.graphs if self.text_encoder is not None else None
        if te is not None:
            msg += f"; text encoder: {te.status()}"
        if self.condition_graphs is not None:
            msg += f"; condition: {self.condition_graphs.status()}"
        return msg

    def memory_pools(self) -> dict:
        """The CUDA memory pools this generator made, by id: the kept KV caches' ("kv") and the CUDA graphs'
        shared one ("graphs"), for `memory.reserved_by_pool`."""
        gr = self._graphs
        out = {}
        if gr is not None and gr.kv_pool is not None:
            out[tuple(gr.kv_pool.id)] = "kv"
        if gr is not None and gr._pool is not None:
            out[tuple(gr._pool)] = "graphs"
        te = self.text_encoder.graphs if self.text_encoder is not None else None
        if te is not None and te._pool is not None:
            out[tuple(te._pool)] = "text graphs"
        cg = self.condition_graphs
        if cg is not None and cg._pool is not None:
            out[tuple(cg._pool)] = "condition graphs"
        return out

    def kept_kv_bytes(self) -> int:
        """Bytes of the KV caches kept between generations for the CUDA graphs (0 when none are): memory
        the allocator holds while idle, which the memory accounting must not count twice."""
        kept = self._graphs.kept_caches if self._graphs is not None else None
        return sum(c.nbytes for c in kept) if kept else 0

    def release_graphs(self, keep_warm: bool = False) -> None:
        """Drop the CUDA graphs and their buffers, the kept KV caches among them (freed at the next empty_cache).
        keep_warm: the next generation of the same schedule captures at once instead of running eagerly first (its
        kernels are compiled and tuned): what an idle release (`Engine`'s `idle_release_s`) wants."""
        self.end_preload()           # (its weights are in the kept caches' block)
        gr = self._graphs
        self._warm_after_release = (gr.key, frozenset(gr.warm)) if keep_warm and gr is not None else None
        self._graphs = None
        if self.text_encoder is not None and self.text_encoder.graphs is not None:
            self.text_encoder.graphs.drop()
        if self.condition_graphs is not None:
            self._last_condition = None       # (the graphs' outputs)
            self.condition_graphs.drop()

    def _caches(self, schedule: ScaleSchedule, B: int):
        """(KV caches, ScaleGraphs or None) for one generation: with cuda_graphs, the kept graphs when the
        schedule and batch match the last generation's (else new ones, the old dropped), and with
        graph_keep_kv the kept caches too, emptied; otherwise new caches (the graphs then replay only if
        they land where the graphs were captured). Graphs need caches that say graph_safe."""
        c = self.cfg
        key = (tuple(schedule.scales), B, self.dtype, id(self.kv_cache_factory), self.graph_max_tokens, self.graph_pool)
        if not (self.cuda_graphs and self._graphs is not None and self._graphs.key == key):
            self._graphs = None
        gr = self._graphs
        if gr is not None and self.graph_keep_kv and (gr.kept_caches is not None or gr.kv_pool is not None):
            if gr.kept_caches is None:           # the last decode failed before they were made again
                gr.kept_caches = self._new_caches(schedule, B, gr.kv_pool)
            for cc in gr.kept_caches:
                cc.length = 0                    # the stored tokens are overwritten scale by scale
            gr.adopt(gr.kept_caches)
            return gr.kept_caches, gr
        # graphs need caches that say graph_safe (asked of a one-token cache on the meta device)
        if not (self.cuda_graphs and getattr(self.kv_cache_factory(B, c.num_heads, c.head_dim, 1, self.dtype, "meta",
                                                                   layer=0), "graph_safe", False)):
            self._graphs = None
            return self._new_caches(schedule, B), None
        if self._graphs is None:
            self._graphs = ScaleGraphs(key, rope_tables(schedule, c.head_dim, self.device), self.graph_max_tokens,
                                       capture=self.device.type == "cuda", pool=self.graph_pool)
            warm, self._warm_after_release = self._warm_after_release, None
            if warm is not None and warm[0] == key:
                self._graphs.warm = set(warm[1])
        gr = self._graphs
        if self.graph_keep_kv and self.decode_in_kv_memory and self.device.type == "cuda" and _HAS_MEM_POOL:
            gr.kv_pool = torch.cuda.MemPool()
        caches = self._new_caches(schedule, B, gr.kv_pool if self.graph_keep_kv else None)
        gr.adopt(caches)
        gr.kept_caches = caches if self.graph_keep_kv else None
        gr.kept_spec = (schedule, B) if self.graph_keep_kv else None
        return caches, gr

    def _remake_kept_caches(self, schedule: ScaleSchedule, B: int, pool=None) -> Optional[list]:
        """The kept KV caches made again after the decode (`_new_caches`). On an out-of-memory error the
        Python garbage is collected and the allocator's free cache returned, then it is tried once more;
        if that fails too, None: this generation's image is kept, and the next generation makes the
        caches itself (`_caches`) or reports the error. Seen on fresh H100 machines, in the first warm-up
        generation (the one that autotunes): the old 3.43 GiB block was still allocated and the new one
        passed the cap (docs/BENCHMARKS.md, tenth and twelfth sessions)."""
        for attempt in range(2):
            try:
                return self._new_caches(schedule, B, pool)
            except torch.cuda.OutOfMemoryError as e:
                if attempt:
                    warnings.warn(f"var_gen_ros: KV caches not made again after the decode ({str(e)[:200]}); "
                                  "the next generation makes them")
                    return None
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        return None

    def _renew_kv_pool(self, graphs: ScaleGraphs, schedule: ScaleSchedule, B: int) -> int:
        """The kept caches made again in a new memory pool, the old pool dropped with its free segments
        (a live MemPool never returns them to the driver). For a pool the VAE decode or a load grew beside a
        block that was still held: on fresh H100 machines it kept ~2.9 GiB more than its 3.43 GiB block, and
        the next generation's graph capture passed the 14 GiB cap (docs/BENCHMARKS.md, thirteenth
        session). The graphs see the caches' new addresses and are captured again next generation.
        Returns the bytes returned to the driver."""
        before = torch.cuda.memory_reserved(self.device)
        excess = kv_pool_excess(graphs.kv_pool, self._kv_block_at)
        graphs.kept_caches = None
        graphs.kv_pool = None            # (the MemPool's last reference: its free segments become releasable)
        gc.collect()
        torch.cuda.empty_cache()
        graphs.kv_pool = torch.cuda.MemPool()
        graphs.kept_caches = self._remake_kept_caches(schedule, B, graphs.kv_pool)
        freed = before - torch.cuda.memory_reserved(self.device)
        # the net change in reserved memory: the new pool's block can take a segment more than the old one gave back
        # (the GPU tests' tiny caches: 2 MiB), so say which way it went rather than "-2 MiB returned"
        net = (f"{freed / 2 ** 20:.0f} MiB returned to the driver" if freed >= 0 else
               f"{-freed / 2 ** 20:.0f} MiB more reserved than before")
        warnings.warn(f"var_gen_ros: the KV caches' memory pool held {excess / 2 ** 20:.0f} MiB beside its block "
                      f"after the work it was lent to; made anew ({net}; the CUDA graphs are captured again in the "
                      "next generation)")
        return freed

    def _new_caches(self, schedule: ScaleSchedule, B: int, pool=None) -> list:
        """One KV cache per layer; with `pool` (a torch.cuda.MemPool), every layer's K/V are views of one
        block allocated in that pool.

        Why: freed together (after the last scale, while the VAE decoder allocates in the pool) they leave
        one free block that the decoder's large activations fit in, so the decode no longer adds its
        activations to the caches' memory; and the block made again afterwards is that same free block (the
        pool's best fit), so the caches come back at the addresses the graphs were captured with
        (ScaleGraphs.adopt checks it, and captures again if not)."""
        c = self.cfg

        def make(alloc=None):
            kw = {} if alloc is None else {"alloc": alloc}
            return [self.kv_cache_factory(B, c.num_heads, c.head_dim, schedule.cached_tokens, self.dtype, self.device,
                                          layer=i, **kw) for i in range(c.depth)]
        if pool is None:
            return make()
        pad = lambda n: -(-n // 512) * 512             # each view starts 512-byte aligned
        sizes = []
        make(lambda shape, dt: sizes.append(math.prod(shape) * dt.itemsize) or torch.empty(shape, dtype=dt, device="meta"))
        with torch.cuda.use_mem_pool(pool, self._cuda_index()):
            block = torch.empty(sum(pad(n) for n in sizes), dtype=torch.uint8, device=self.device)
        self._kv_block_at = (block.data_ptr(), block.nbytes)     # (see `generate`: is it free before the decode?)
        offset = 0

        def carve(shape, dt):
            nonlocal offset
            n = math.prod(shape) * dt.itemsize
            t = block[offset:offset + n].view(dt).view(shape)
            offset += pad(n)
            return t
        return make(carve)

    def _cuda_index(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def encode_text(self, prompt: str, negative_prompt: Optional[str], use_cfg: bool):
        with self._loaded(self.text_encoder_parked):
            return self._encode(prompt, negative_prompt, use_cfg)

    def _encode(self, prompt: str, negative_prompt: Optional[str], use_cfg: bool):
        prompts = [prompt] + ([negative_prompt] if (use_cfg and negative_prompt) else [])
        te = self.text_encoder
        want = TEXT_GRAPHS and self.cuda_graphs and te.device.type == "cuda"
        if want != (te.graphs is not None):
            te.use_graphs(want)
        feats, mask = te.encode(prompts)
        # the encoder may live elsewhere (text_encoder: cpu keeps it off the GPU): features go to the model
        feats, mask = feats.to(self.device), mask.to(self.device)
        if use_cfg and not negative_prompt:
            un = self.model.uncond_text(feats[:1], mask[:1])
            feats, mask = torch.cat([feats, un]), torch.cat([mask, mask])
        return feats, mask

    def _encode_with_condition(self, prompt: str, negative_prompt: Optional[str], use_cfg: bool, key, t_start: float,
                               timings: dict):
        """A new prompt's features and condition with the text encoder and the condition layers both offloaded: the
        condition layers' read begins as soon as the encoder is loaded and runs on a side stream while the encoder
        computes (ParkedWeights.prefetch), in the same lease of the caches' block; so a new prompt waits for one read
        where it waited for two. Where the two do not fit in the block together, one after the other (encode_text,
        then _condition)."""
        self._last_condition = None           # its memory goes before the loads
        cond = None
        with self._loaded(self.text_encoder_parked, then=self.condition_parked) as ahead:
            feats, mask = self._encode(prompt, negative_prompt, use_cfg)
            if ahead is not None:
                self._sync()
                timings["text_encoder_s"] = time.perf_counter() - t_start
                with self.condition_parked.loaded(empty_cache=False, prefetched=ahead):
                    cond = self._encode_condition(feats, mask)
        if cond is None:
            self._sync()
            timings["text_encoder_s"] = time.perf_counter() - t_start
            return feats, mask, self._condition(feats, mask, key)
        self._last_condition = (key, cond)
        return feats, mask, cond

    def _lendable(self, parked) -> bool:
        """Whether `parked`'s large tensors can load into the kept KV caches' block (dead between generations)."""
        gr = self._graphs
        return (gr is not None and gr.kv_pool is not None and gr.kept_caches is not None and gr.kept_spec is not None
                and not self._caches_in_use and parked.device.type == "cuda"     # (text_encoder: cpu parks on the host)
                and self._kv_block_at is not None and self._kv_block_at[1] >= parked.large_bytes)

    @contextlib.contextmanager
    def _loaded(self, parked, then=None, prefetch: Optional[bool] = None):
        """Offloaded weights (parking.ParkedWeights, or None: resident, nothing to do) loaded for the block. With KV
        caches kept for the graphs, the weights' large tensors go into the caches' block while it is dead (between
        generations: the next one overwrites it), as the VAE decode does (`_kv_block_lent`); so a load does not add to
        the kept caches (on the H100 at 1024², the text encoder loaded beside them made the text stage the peak: 8.99
        GiB against 8.45 for the largest scale, thirtieth session). Elsewhere the weights take new memory.

        `then`: other offloaded weights whose read begins once `parked` is loaded (ParkedWeights.prefetch), into the
        same lease when both fit in the caches' block, or where there are no kept caches to keep clear of; yields that
        prefetch, for `then.loaded(prefetched=...)` inside the block (its read waited for and dropped after the
        block), or None where it could not begin. `prefetch`: whether `then` is read beside (default
        OFFLOAD_PREFETCH).

        Weights that preload_text_weights holds loaded are used as they are (yields None); any other load first lets
        go of those, whose memory it may need."""
        if parked is None:
            yield None
            return
        if self._preload is not None:
            if parked in self._preload[1]:
                yield None
                return
            self.end_preload()
        gr = self._graphs
        prefetch = OFFLOAD_PREFETCH if prefetch is None else prefetch
        then = then if prefetch and then is not None and then.device == parked.device else None
        # only the large tensors go into the pool, in one block (parking.LARGE), which must fit in the caches' block;
        # the small ones and what the block's code allocates (activations, outputs) stay outside
        lend = self._lendable(parked)
        if not lend:
            # a read beside kept caches would add to them (then's own load borrows their block)
            ahead = then if then is not None and (gr is None or gr.kept_caches is None) else None
            with parked.loaded(), self._prefetch(ahead, None) as pre:
                yield pre
            return
        # both large blocks in the caches' block
        both = (then is not None
                and self._kv_block_at[1] >= _pool_bytes(parked.large_bytes) + _pool_bytes(then.large_bytes))
        allocated0 = torch.cuda.memory_allocated(self.device)
        gr.kept_caches = None
        with self._kv_block_lent(gr, allocated0, "an offloaded load") as lease:
            with parked.loaded(empty_cache=lease is None, pool_context=lease), \
                    self._prefetch(then if both and lease is not None else None, lease) as pre:
                yield pre

    @staticmethod
    @contextlib.contextmanager
    def _prefetch(parked, lease):
        """parked.prefetch(lease) for the block (None when parked is None), its read waited for after the block (so no
        copy still writes into memory freed after it) and its blocks let go."""
        pre = None if parked is None else parked.prefetch(lease)
        try:
            yield pre
        finally:
            if pre is not None:
                pre.close()

    @contextlib.contextmanager
    def _kv_block_lent(self, gr: ScaleGraphs, allocated0: int, what: str, trace: Optional[dict] = None):
        """For work that runs while the kept KV caches are dead (the VAE decode after the last scale, an offloaded
        load between generations): yields a `_PoolLease` whose allocations take the caches' freed block (their memory
        pool's best fit), or None where something still holds the block (the work then allocates outside the pool;
        warned, with the holders). The caller has dropped gr.kept_caches, and `allocated0` is the allocator's count
        from before the block's last reference went.

        After the work the caches are made again in the pool, in that same free block: the same addresses, so the
        graphs replay. Where the block was held, the caches could not be made, or the pool grew beside its block, the
        pool is made anew with its caches (`_renew_kv_pool`: a live MemPool never returns its segments)."""
        schedule, B = gr.kept_spec
        ptr, nbytes = self._kv_block_at
        held = not free_or_collect(lambda: allocated0 - torch.cuda.memory_allocated(self.device) >= nbytes)
        if held:    # allocating in the pool would grow it beside the block
            warnings.warn(f"var_gen_ros: the KV caches' block is still held before {what} (it runs outside their pool, "
                          "which is made anew after it): " + "; ".join(holders_of(ptr)))
        snap = MEMORY_TRACE and trace is not None      # (a memory snapshot: for diagnosis only)
        if snap:
            trace["kv_pool_before"] = pool_reserved(gr.kv_pool, self.device)
        reserved0 = torch.cuda.memory_reserved(self.device)
        lease = None if held else _PoolLease(gr.kv_pool, self._cuda_index())
        try:
            yield lease
        finally:
            renew = held
            if lease is not None:
                lease.end()              # (a reference left to the pool would keep its segments from the driver)
                if snap:
                    trace["kv_pool_after_work"] = pool_reserved(gr.kv_pool, self.device)
                # made again now, while the pool's block is free (an empty_cache between requests would otherwise
                # return it to the driver, and new caches would land elsewhere)
                gr.kept_caches = self._remake_kept_caches(schedule, B, gr.kv_pool)
                grew = torch.cuda.memory_reserved(self.device) - reserved0 > KV_POOL_SLACK
                renew = gr.kept_caches is None or grew and kv_pool_excess(gr.kv_pool, self._kv_block_at) > KV_POOL_SLACK
            if renew:
                freed = self._renew_kv_pool(gr, schedule, B)
                if trace is not None:
                    trace["kv_pool_renewed"] = freed
            elif self._kv_block_at[0] != ptr:       # the graphs are captured again next generation (ScaleGraphs.adopt)
                warnings.warn(f"var_gen_ros: the KV caches came back at another address after {what}; the CUDA graphs "
                              "are captured again")
            if snap:
                trace["kv_pool_after_remake"] = pool_reserved(gr.kv_pool, self.device)

    def _encode_condition(self, feats, mask):
        """model.encode_condition, with CONDITION_GRAPHS and cuda_graphs on a GPU as CUDA graphs per (batch, text
        length): its output then is the graph's, valid until the next prompt of that shape is encoded."""
        if not (CONDITION_GRAPHS and self.cuda_graphs and feats.is_cuda):
            self.condition_graphs = None
            return self.model.encode_condition(feats, mask)
        if self.condition_graphs is None:
            from .text_graphs import PromptGraphs
            m, reads = self.model, self.condition_layers()
            reads.add_module("text_norm", m.text_norm)
            for i, b in enumerate(m.blocks):          # (their K/V biases)
                reads.add_module(f"block{i}_ca", b.ca)
            self.condition_graphs = PromptGraphs(reads, "condition layers", copy_out=False,
                                                 max_shapes=CONDITION_SHAPES)
        return self.condition_graphs.run(self.model.encode_condition, feats, mask)

    def _condition(self, feats, mask, key):
        """encode_condition's output for the text features; with the condition layers offloaded, the last prompt's is
        kept (`key`: the prompt's, None for features given by the caller) and any other loads them."""
        if self.condition_parked is None:
            return self._encode_condition(feats, mask)
        last = self._last_condition
        if key is not None and last is not None and last[0] == key:
            return last[1]
        self._last_condition = None           # its memory goes before the load
        with self._loaded(self.condition_parked):
            cond = self._encode_condition(feats, mask)
        if key is not None:
            self._last_condition = (key, cond)
        return cond

    @torch.no_grad()
    def generate(self, prompt: str, *, seed: Optional[int] = None, cfg: Union[float, Sequence[float], None] = None,
                 tau: Union[float, Sequence[float], None] = None, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, negative_prompt: Optional[str] = None,
                 height: Optional[int] = None, width: Optional[int] = None, h_div_w: Optional[float] = None,
                 pn: Optional[str] = None, use_kv_cache: bool = True, preview: bool = False,
                 callback: Optional[Callable[[ScaleEvent], None]] = None,
                 should_stop: Optional[Callable[[], bool]] = None,
                 text_features=None) -> GenerationResult:
        # with previews (a decode after every scale, when there is a callback) an offloaded VAE is loaded once for
        # the whole generation, not once per scale: it is then resident through the scales, as if not offloaded
        keep = preview and callback is not None and self.vae_parked is not None
        try:
            with self.vae_parked.loaded() if keep else contextlib.nullcontext():
                return self._generate(prompt, seed=seed, cfg=cfg, tau=tau, top_k=top_k, top_p=top_p,
                                      negative_prompt=negative_prompt, height=height, width=width, h_div_w=h_div_w,
                                      pn=pn, use_kv_cache=use_kv_cache, preview=preview, callback=callback,
                                      should_stop=should_stop, text_features=text_features)
        finally:
            self.end_preload()      # (a generation that failed before its first scale)

    def _generate(self, prompt: str, *, seed, cfg, tau, top_k, top_p, negative_prompt, height, width, h_div_w, pn,
                  use_kv_cache, preview, callback, should_stop, text_features) -> GenerationResult:
        c = self.cfg
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt is empty")
        schedule = schedule_for(c, height, width, h_div_w, pn)
        n = len(schedule.scales)
        cfgs = per_scale(c.default_cfg if cfg is None else cfg, n, "cfg")
        taus = per_scale(c.default_tau if tau is None else tau, n, "tau")
        top_k = c.default_top_k if top_k is None else int(top_k)
        top_p = c.default_top_p if top_p is None else float(top_p)
        if any(t <= 0 for t in taus):
            raise ValueError("tau must be > 0")
        use_cfg = any(g != 1.0 for g in cfgs)
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        rng = torch.Generator(device=self.device).manual_seed(int(seed))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        timings = {"scales_s": []}
        t_start = time.perf_counter()

        # text (with the preload's lock: another thread's release_graphs waits for the preloaded weights' use)
        with self._preload_lock:
            cached = key = None
            if text_features is None:
                key = (prompt, negative_prompt or "", use_cfg)
                cached = self.prompt_cache.get(key)
                last = self._last_condition
                joint = (OFFLOAD_PREFETCH and cached is None and self.text_encoder_parked is not None
                         and self.condition_parked is not None and (last is None or last[0] != key))
                if joint:
                    feats, mask, cond = self._encode_with_condition(prompt, negative_prompt, use_cfg, key, t_start,
                                                                    timings)
                else:
                    feats, mask = cached if cached is not None else self.encode_text(prompt, negative_prompt, use_cfg)
                if cached is None:
                    self.prompt_cache.put(key, feats, mask)
            else:
                feats, mask = text_features
                joint = False
            if not joint:
                self._sync()
                timings["text_encoder_s"] = time.perf_counter() - t_start
            t0 = t_start + timings["text_encoder_s"]     # (with the joint loads: the condition's wait and compute)

            m = self.model
            B = feats.shape[0]
            feats, mask = feats.to(self.device), mask.to(self.device)
            cond_BD, cond_gss, text_kv = cond if joint else self._condition(feats, mask, key)
            if self.condition_parked is not None:     # (a load when the prompt is not the last one)
                self._sync()
            timings["condition_s"] = time.perf_counter() - t0
            self.end_preload()          # the caches' block back to the caches before the first scale
        offsets, counts = schedule.offsets(), schedule.token_counts
        caches, graphs = self._caches(schedule, B) if use_kv_cache else (None, None)
        self._caches_in_use = True
        # with graphs, RoPE and the condition come from the buffers the graphs read
        rope = graphs.rope if graphs is not None else rope_tables(schedule, c.head_dim, self.device)
        if graphs is not None:
            T, bound = graphs.bind(cond_BD, cond_gss, text_kv, mask)
            cond_BD, cond_gss, text_kv, mask = bound["cond_BD"], bound["cond_gss"], bound["text_kv"], bound["mask"]
        final = latent_size(schedule.scales[-1], c)
        summed = torch.zeros(1, c.vae.codebook_dim, *final, device=self.device)
        x = cond_BD.unsqueeze(1) + m.pos_start.float()
        seq_inputs, all_bits = [], []
        total_tokens = schedule.total_tokens
        for si, (h, w) in enumerate(schedule.scales):
            t0 = time.perf_counter()
            off, L = offsets[si], counts[si]
            if caches is not None:
                # the embedding goes straight into the blocks (which may update it in place), and this
                # scale's input x is dropped: neither is held through the 40 blocks
                xs, x = m.embed_scale(x, si), None

                def forward(t, off=off, L=L, store=si < n - 1):
                    out = m.run_blocks(t, cond_gss, text_kv, mask, rope[:, off:off + L], caches=caches, start=off,
                                       store=store, chunk_tokens=self.chunk_tokens)
                    return m.logits(out, cond_BD, self.chunk_tokens)
                if graphs is not None and graphs.wants(L):
                    logits = graphs.run(T, si, xs, forward)
                else:
                    logits = forward(xs)
            else:   # reference path: recompute every earlier scale with the block-causal mask
                xs = m.embed_scale(x, si)
                seq_inputs.append(xs)
                sub = ScaleSchedule(schedule.scales[:si + 1], schedule.rope_grid)
                out = m.run_blocks(torch.cat(seq_inputs, 1), cond_gss, text_kv, mask,
                                   rope[:, :off + L], attn_mask=block_causal_mask(sub, self.device))[:, off:]
                logits = m.logits(out, cond_BD, self.chunk_tokens)
                del out
            del xs
            logits = logits / taus[si]
            if use_cfg:
                logits = cfgs[si] * logits[:1] + (1 - cfgs[si]) * logits[1:]
            bits = sample_top_k_top_p(logits.reshape(-1, 2), top_k, top_p, rng).view(1, h, w, c.d_vae).to(torch.uint8)
            all_bits.append(bits[0].cpu())
            codes = bits_to_latent(bits, c)
            summed = summed + (codes if codes.shape[-2:] == final else upsample_codes(codes, final))
            if si < n - 1:
                nxt = upsample_codes(summed, latent_size(schedule.scales[si + 1], c))
                x = m.embed_words(latent_to_tokens(nxt, c))
                x = x.expand(B, -1, -1)
                del nxt
            # free this scale's activations and logits now, not when the next scale overwrites them:
            # between scales only the KV cache and the scale state stay resident
            del logits, bits, codes
            self._sync()
            timings["scales_s"].append(time.perf_counter() - t0)
            if callback is not None:
                pv = self.decode(summed) if preview else None
                done = offsets[si] + counts[si]
                state = [x, summed, rope, cond_BD, cond_gss, feats, mask, *[t for kv in text_kv for t in kv]]
                resident = {"kv_cache": sum(cc.nbytes for cc in caches) if caches else 0,
                            "scale_state": _unique_bytes(state + (graphs.tensors() if graphs is not None else []))}
                callback(ScaleEvent(si, n, done / total_tokens, time.perf_counter() - t_start, pv, resident))
            if should_stop is not None and should_stop():
                raise GenerationCancelled(f"cancelled after scale {si + 1}/{n}")

        kv_cache_bytes = sum(cc.nbytes for cc in caches) if caches else 0
        # the KV cache is dead once the last scale is sampled: free it before the VAE decoder's
        # activations arrive (otherwise the decode stage is the generation's memory peak). Caches kept
        # for the graphs in their own pool are freed too, and the decoder allocates in that pool
        lend = graphs is not None and graphs.kept_caches is not None and graphs.kv_pool is not None
        del text_kv, cond_gss, x
        if lend:
            graphs.kept_caches = None
            allocated0 = torch.cuda.memory_allocated(self.device)      # (the block is freed by the next del)
        del caches
        self._caches_in_use = False
        trace = {}
        t0 = time.perf_counter()
        if not lend:
            image = self.decode(summed)
        else:
            with self._kv_block_lent(graphs, allocated0, "the VAE decode", trace) as lease:
                if lease is None:
                    image = self.decode(summed)
                else:   # an offloaded VAE's large weights go into the pool's free block too, before the activations
                    with self._vae_loaded(lease), lease():
                        image = self.decode(summed)
        del graphs
        self._sync()
        timings["vae_decode_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        memory = {"weights": self.weight_bytes(), "kv_cache_bytes": kv_cache_bytes, **trace}
        if MEMORY_TRACE:
            self.memory_trace.append(trace)
        if self.device.type == "cuda":
            memory["peak_allocated"] = torch.cuda.max_memory_allocated(self.device)
            memory["peak_reserved"] = torch.cuda.max_memory_reserved(self.device)
            memory["current_allocated"] = torch.cuda.memory_allocated(self.device)
        return GenerationResult(image, int(seed), all_bits, schedule, timings, memory, text_cache_hit=cached is not None)

    @torch.no_grad()
    def decode(self, summed_codes: torch.Tensor) -> np.ndarray:
        with self._vae_loaded():      # (inside the final decode's: loaded already)
            return to_uint8(self.vae.decode(summed_codes))[0].cpu().numpy()

    def _vae_loaded(self, pool_context=None):
        """An offloaded VAE loaded for the block (its large weights inside `pool_context()` when given), or nothing."""
        if self.vae_parked is None:
            return contextlib.nullcontext()
        return self.vae_parked.loaded(empty_cache=pool_context is None, pool_context=pool_context)
