"""The W4A4 product's two kernels in CUDA C++ for few rows (M <= 32): kernel 1, the activations' two-level INT4
quantization and low-rank down-projection (kernels/w4a4_quantize_small_m.cu, `quantize`), and the GEMM
(kernels/w4a4_small_m.cu, `w4a4_small_m`), called after kernel 1
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

SOURCES = ("w4a4_small_m.cu", "w4a4_quantize_small_m.cu", "w4a4_small_m_binding.cpp")
MAX_M = 32          # the kernel's n8 token tiles: 1, 2 or 4 of them
MAX_RANK = 64       # the epilogue stages the low-rank operands in shared memory
# The GEMM as a programmatic dependent launch on sm_90+ (kernels/w4a4_small_m.cu's head: its blocks start while
# kernel 1 runs and fetch the weights into the L2, then wait for kernel 1's end); the same bits either way. On by
# default since the twenty-sixth session: on the H100 with the weights cold in the L2, as a generation's 40 blocks
# leave them, 6-19 % faster per layer at 2 and 8 rows and 2-13 % at 16 on every 8B shape; with them warm, 5-12 %
# faster on three shapes and 1-10 % slower on the three with the most weight bytes; a whole 1024² generation the same
# (1.058 against 1.059 s; docs/BENCHMARKS.md). VAR_GEN_W4A4_PDL=0 turns it off.
PDL = os.environ.get("VAR_GEN_W4A4_PDL", "1") == "1"
# Why programmatic dependent launches stopped in this process ("" while they have not): a build without them (CUDA
# < 12 at build time) never asks; a launch the driver refuses is launched again without, once, with one warning.
PDL_REFUSED = ""
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
                    warnings.warn(f"var_gen_ros: the W4A4 CUDA kernels (small-M) are unavailable, the Triton "
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


def pdl_for(device) -> bool:
    """Whether the GEMM's launches on `device` are programmatic dependent launches: PDL on, an sm_90+ GPU (torch
    keeps the device's properties), an extension built with them, and no launch refused in this process."""
    if not PDL or PDL_REFUSED or torch.cuda.get_device_capability(device)[0] < 9:
        return False
    return _built_with_pdl()


def _built_with_pdl() -> bool:
    """Whether the extension (built now if it is not yet) can launch the GEMM as a programmatic dependent launch;
    asked once, as this is on every small-M call's path."""
    if "has_pdl" not in _STATE:
        ext = extension()
        _STATE["has_pdl"] = ext is not None and bool(getattr(ext, "has_pdl", lambda: False)())
    return _STATE["has_pdl"]


def pdl_status() -> str:
    """For diagnostics: whether the GEMM is a programmatic dependent launch where the GPU has them (sm_90+)."""
    if not PDL:
        return "VAR_GEN_W4A4_PDL=0: no programmatic dependent launch"
    if PDL_REFUSED:
        return f"no programmatic dependent launch: {PDL_REFUSED}"
    if _STATE.get("module") is not None and not _built_with_pdl():
        return "no programmatic dependent launch: the extension was built without it (CUDA < 12)"
    return "a programmatic dependent launch of kernel 1 on sm_90+"


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
    args = (q, ux, layer.qweight, layer.wscales, wu, lr if layer.rank else None, layer.lora_up if layer.rank else None,
            layer.bias, y, ws, cnt, warps, splits, act)
    pdl = pdl_for(q.device)
    why = ext.w4a4_small_m(*args, pdl)
    if why and pdl and "programmatic dependent launch unavailable" in why:
        global PDL_REFUSED               # not launched: again without it, and no more asking in this process
        PDL_REFUSED = why.split(": ", 1)[-1]
        warnings.warn(f"var_gen_ros: the small-M W4A4 GEMM runs without programmatic dependent launches: {why}")
        why = ext.w4a4_small_m(*args, False)
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


# --- kernel 1 for M <= 32 (kernels/w4a4_quantize_small_m.cu) ---

QUANT_BLOCKS = 28        # blocks (slices of K) the quantizer aims for: 2 groups each at K = 3584, 8 at 14336
_QUANT_COUNTERS = {}


def quantize_supports(x2: torch.Tensor, layer) -> bool:
    """Whether the CUDA kernel 1 takes x2 (M, K) for this layer (the extension itself is not built here)."""
    M, K = x2.shape
    return (1 <= M <= MAX_M and x2.is_cuda and x2.dtype in (torch.bfloat16, torch.float16) and x2.is_contiguous()
            and x2.data_ptr() % 16 == 0 and K % 64 == 0 and layer.rank <= MAX_RANK
            and (not layer.rank or (layer.lora_down.dtype == x2.dtype and layer.lora_down.data_ptr() % 16 == 0))
            and quantize_groups_per_block(M, K, _sms(x2.device), layer.rank) is not None)


def quantize_groups_per_block(M: int, K: int, sms: int, R: int = 32):
    """64-wide groups of K per block: about QUANT_BLOCKS blocks, fewer groups (more blocks, at most one per SM for
    the grid barrier) where a block's shared memory would not fit; None where no count fits."""
    G = K // 64
    gps = -(-G // min(QUANT_BLOCKS, sms))
    while gps >= 1 and -(-G // gps) <= sms:
        if quantize_smem_fits(M, gps, R):
            return gps
        gps -= 1
    return None


def quantize_smem_fits(M: int, gps: int, R: int = 32) -> bool:
    """Whether a block of the CUDA kernel 1 (M rows, `gps` groups, rank R) fits its 46 KB of shared memory: x̂ of
    its slice (M x max(gps x 64, 256) floats, later the low-rank runs' sums) and its rows of L_down (16-bit)."""
    return M * max(gps * 64, 256) * 4 + gps * 64 * R * 2 <= 46 * 1024


def _quant_counters(device) -> torch.Tensor:
    key = (device.type, device.index)
    if key not in _QUANT_COUNTERS:      # kept for good: a captured CUDA graph points at it
        _QUANT_COUNTERS[key] = torch.zeros(2, dtype=torch.int32, device=device)
    return _QUANT_COUNTERS[key]


def quantize(x2: torch.Tensor, layer, inv: torch.Tensor, inv7: float, gps: int = None):
    """Kernel 1 of the i8 layout for M <= 32 in one launch: (q (M, K) int8 q·m, units (M,) float32, low-rank partials
    (S, M, R) float32 per slice of K, or None), the same codes and units as
    `w4a4_gemm_triton.quantize_activations(..., i8=True)` bit for bit, the low-rank input in float32 FMAs (the GEMMs'
    epilogues sum the S partials in order). `inv` = 1/λ (float32, K), `inv7` the reference's float32 1/7; `gps`
    (groups of K per block) fixes the launch (tests)."""
    ext = extension()
    if ext is None:
        raise RuntimeError(f"the small-M W4A4 kernels are unavailable: {build_status()}")
    M, K = x2.shape
    R = layer.rank
    if gps is None:
        gps = quantize_groups_per_block(M, K, _sms(x2.device), R)
        if gps is None:
            raise ValueError(f"quantize_small_m: {M} rows of K = {K} do not fit a block's shared memory")
    S = -(-(K // 64) // max(gps, 1))
    dev = x2.device
    q = torch.empty(M, K, dtype=torch.int8, device=dev)
    ux = torch.empty(M, dtype=torch.float32, device=dev)
    part = torch.empty(S * M, dtype=torch.float32, device=dev)
    lrp = torch.empty(S, M, R, dtype=torch.float32, device=dev) if R else part
    why = ext.quantize_small_m(x2, inv, layer.lora_down if R else None, q, ux, part, lrp, _quant_counters(dev), gps, inv7)
    if why:
        raise ValueError(why)
    return q, ux, (lrp if R else None)
