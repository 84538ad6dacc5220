"""The W4A4 GEMMs in CUDA C++ for few rows (M <= 32, kernels/w4a4_small_m.cu) and for tens to hundreds of rows
(shared-memory tiles, kernels/w4a4_tiled.cu), one extension, called after kernel 1
(`w4a4_gemm_triton.quantize_activations(..., i8=True)`) on the i8 layout: int8 q·m activations with one unit
per row, packed INT4 weights with two-level scales. Its reference is the same as every W4A4 path's
(`W4A4Linear.reference_forward`, quant/w4a4.py); test/test_kernels_gpu.py compares them.

Built on first use by torch.utils.cpp_extension (nvcc and a host compiler; cached under
TORCH_EXTENSIONS_DIR, so a later process loads it in a second). Where the build fails (no nvcc, no compiler,
a bad toolchain) the caller gets None, one warning says why, and the W4A4 GEMM keeps its Triton i8 path.
"""
from __future__ import annotations

import os
import threading
import warnings

import torch

SOURCES = ("w4a4_small_m.cu", "w4a4_tiled.cu", "w4a4_small_m_binding.cpp")
MAX_M = 32          # the kernel's n8 token tiles: 1, 2 or 4 of them
MAX_RANK = 64       # the epilogue stages the low-rank operands in shared memory
_LOCK = threading.Lock()
_STATE = {}
_BUFFERS = {}
_SMS = {}


def extension():
    """The compiled extension, or None (one warning, `build_status()` says why)."""
    if "module" not in _STATE:
        with _LOCK:
            if "module" not in _STATE:
                try:
                    from torch.utils.cpp_extension import load
                    here = os.path.dirname(os.path.abspath(__file__))
                    _STATE["module"] = load(name="var_gen_w4a4_small_m", sources=[os.path.join(here, s) for s in SOURCES],
                                            extra_cuda_cflags=["-O3", "-lineinfo"], verbose=False)
                    _STATE["reason"] = "built"
                except Exception as e:   # no nvcc / compiler, or a failed build: the Triton path still works
                    _STATE["module"] = None
                    _STATE["reason"] = f"build failed ({type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''})"
                    warnings.warn(f"var_gen_ros: the W4A4 CUDA kernels (small-M, tiled) are unavailable, the Triton "
                                  f"i8 path serves their rows: {_STATE['reason']}")
    return _STATE["module"]


def build_status() -> str:
    """'built', 'not built yet' or 'build failed (...)'."""
    return _STATE.get("reason", "not built yet")


def supports(M: int, layer, dtype: torch.dtype) -> bool:
    """Whether the kernel takes this call's shapes and dtypes (the extension itself is not built here)."""
    K, N = layer.in_features, layer.out_features
    same = layer.wscales.dtype == dtype and (not layer.rank or layer.lora_up.dtype == dtype) and (
        layer.bias is None or layer.bias.dtype == dtype)
    return (1 <= M <= MAX_M and dtype in (torch.bfloat16, torch.float16) and same and K % 64 == 0
            and N % 32 == 0 and K // 64 >= 4 and layer.rank <= MAX_RANK)



def _sms(device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def candidates(K: int) -> list:
    """(warps, splits) launches: blocks of 4 or 8 warps (each warp its own slice of K), K split over 1-8
    blocks, every warp keeping at least one 64-wide group."""
    return [(w, s) for w in (4, 8) for s in (1, 2, 4, 8) if s * w <= K // 64]


def default_launch(M: int, N: int, K: int, sms: int) -> tuple:
    """(warps, splits) without timing (inside a CUDA graph capture): the timed picks of the H100 sweep at 2 and 8
    rows (nineteenth session): blocks of 8 warps, K in one block, split over two for long K (14336 -> 3584);
    (4, 1) on 3584 -> 14336 was 5 µs faster than this rule's (8, 1). `sms` is kept for other GPUs' rules."""
    return 8, (2 if K // 64 >= 128 else 1)


def _bucket(M: int) -> int:
    """The tuned launch's row bucket: M rounded up to a power of two."""
    return 1 << max(0, (M - 1).bit_length())


_PICKS = {}


def _graph_us(fn, launches: int = 10, replays: int = 5) -> float:
    """GPU µs per call: `launches` calls captured in one CUDA graph, replayed."""
    fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(launches):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / (launches * replays)


def _buffers(device, words: int, tiles: int):
    """A persistent zeroed int32 workspace of >= `words` and counters of >= `tiles` per device: every call
    leaves them zeroed (old ones stay alive: a captured CUDA graph may still point at them)."""
    key = (device.type, device.index)
    kept = _BUFFERS.get(key)
    if kept is None or kept[-1][0].numel() < words or kept[-1][1].numel() < tiles:
        pair = (torch.zeros(max(words, 1 << 16), dtype=torch.int32, device=device),
                torch.zeros(max(tiles, 1 << 12), dtype=torch.int32, device=device))
        _BUFFERS.setdefault(key, []).append(pair)
    return _BUFFERS[key][-1]


def _launch(ext, q, ux, layer, wu, lr, y, act, warps, splits):
    M, K = q.shape
    N = layer.out_features
    if warps not in (4, 8) or splits < 1 or splits * warps > K // 64:
        raise ValueError(f"w4a4_small_m: {warps} warps x {splits} splits do not fit the {K // 64} groups of K "
                         f"(4 or 8 warps, each at least one group)")
    ws, cnt = _buffers(q.device, M * N, N // 32)
    why = ext.w4a4_small_m(q, ux, layer.qweight, layer.wscales, wu, lr if layer.rank else None,
                           layer.lora_up if layer.rank else None, layer.bias, y, ws, cnt, warps, splits, act)
    if why:
        raise ValueError(why)


def w4a4_small_m(q: torch.Tensor, ux: torch.Tensor, layer, wu: torch.Tensor, lr, y: torch.Tensor, act: int = 0,
                 warps: int = None, splits: int = None) -> torch.Tensor:
    """y (M, N) = the layer's W4A4 product from kernel 1's q·m `q` (M, K) int8, units `ux` (M,) and low-rank
    partials `lr` (S, M, R) float32 (None without a low-rank branch); `act` 1 = GELU-tanh. The launch (warps,
    splits) is timed once per (row bucket, N, K, device) among `candidates` at the first call outside a CUDA
    graph capture (CUDA-graph replay, ~10 ms), `default_launch` inside one; `warps` / `splits` fix it."""
    ext = extension()
    if ext is None:
        raise RuntimeError(f"the small-M W4A4 kernel is unavailable: {build_status()}")
    M, K = q.shape
    N = layer.out_features
    if warps is None or splits is None:
        key = (_bucket(M), N, K, q.device.index)
        pick = _PICKS.get(key)
        if pick is None:
            if torch.cuda.is_current_stream_capturing():
                pick = default_launch(M, N, K, _sms(q.device))
            else:
                times = {c: _graph_us(lambda c=c: _launch(ext, q, ux, layer, wu, lr, y, act, *c)) for c in candidates(K)}
                pick = _PICKS[key] = min(times, key=times.get)
        warps, splits = warps or pick[0], splits or pick[1]
    _launch(ext, q, ux, layer, wu, lr, y, act, warps, splits)
    return y


# --- kernels/w4a4_tiled.cu: output tiles of TILES[t] = (columns, tokens), operands staged in shared memory ---

TILES = {0: (128, 32), 1: (128, 64), 2: (256, 32)}   # 4, 8 and 8 warps, each a 32 x 32 sub-tile
_TILED_PICKS = {}


def tiled_supports(M: int, layer, dtype: torch.dtype) -> bool:
    """Whether the tiled kernel takes this call's shapes and dtypes (the extension itself is not built here)."""
    K, N = layer.in_features, layer.out_features
    same = layer.wscales.dtype == dtype and (not layer.rank or layer.lora_up.dtype == dtype) and (
        layer.bias is None or layer.bias.dtype == dtype)
    return (M >= 1 and dtype in (torch.bfloat16, torch.float16) and same and K % 128 == 0 and N % 128 == 0
            and layer.rank <= MAX_RANK)


def tiled_candidates(N: int, K: int) -> list:
    """(tile, splits) launches: every tile whose columns divide N, K split over 1-8 blocks of at least two
    128-wide stages each."""
    return [(t, s) for t, (cols, _) in TILES.items() if N % cols == 0 for s in (1, 2, 4, 8) if 2 * s <= K // 128]


def tiled_default_launch(M: int, N: int, K: int, sms: int) -> tuple:
    """(tile, splits) without timing (inside a CUDA graph capture): 64-token tiles above 32 rows, and K split
    until the grid covers the GPU's SMs once (a rule, not a measurement)."""
    tile = 1 if M > 32 else 0
    cols, toks = TILES[tile]
    blocks = (N // cols) * -(-M // toks)
    splits = 1
    while blocks * splits < sms and 2 * (2 * splits) <= K // 128 and splits < 8:
        splits *= 2
    return tile, splits


def _launch_tiled(ext, q, ux, layer, wu, lr, y, act, tile, splits):
    M, K = q.shape
    N = layer.out_features
    if tile not in TILES or splits < 1 or splits > K // 128 or N % TILES[tile][0]:
        raise ValueError(f"w4a4_tiled: tile {tile} x {splits} splits does not fit {K} -> {N} (tiles {sorted(TILES)}, "
                         f"columns dividing N, at most K / 128 = {K // 128} splits)")
    cols, toks = TILES[tile]
    ws, cnt = _buffers(q.device, M * N, (N // cols) * -(-M // toks))
    why = ext.w4a4_tiled(q, ux, layer.qweight, layer.wscales, wu, lr if layer.rank else None,
                         layer.lora_up if layer.rank else None, layer.bias, y, ws, cnt, tile, splits, act)
    if why:
        raise ValueError(why)


def w4a4_tiled(q: torch.Tensor, ux: torch.Tensor, layer, wu: torch.Tensor, lr, y: torch.Tensor, act: int = 0,
               tile: int = None, splits: int = None) -> torch.Tensor:
    """As `w4a4_small_m`, through the tiled kernel (any M): the launch (tile, splits) is timed once per
    (row bucket, N, K, device) among `tiled_candidates` at the first call outside a CUDA graph capture,
    `tiled_default_launch` inside one; `tile` / `splits` fix it."""
    ext = extension()
    if ext is None:
        raise RuntimeError(f"the W4A4 CUDA kernels are unavailable: {build_status()}")
    M, K = q.shape
    N = layer.out_features
    if tile is None or splits is None:
        key = (_bucket(M), N, K, q.device.index)
        pick = _TILED_PICKS.get(key)
        if pick is None:
            if torch.cuda.is_current_stream_capturing():
                pick = tiled_default_launch(M, N, K, _sms(q.device))
            else:
                times = {c: _graph_us(lambda c=c: _launch_tiled(ext, q, ux, layer, wu, lr, y, act, *c))
                         for c in tiled_candidates(N, K)}
                pick = _TILED_PICKS[key] = min(times, key=times.get)
        tile, splits = pick[0] if tile is None else tile, pick[1] if splits is None else splits
    _launch_tiled(ext, q, ux, layer, wu, lr, y, act, tile, splits)
    return y
