"""Choose between the compiled kernels (kernels/, Triton) and the PyTorch reference.

The kernels are used when the tensor is on a CUDA device, Triton imports and the kernel module
loads; otherwise the reference runs, with one warning saying why. VAR_GEN_KERNELS=0 forces the
reference. `kernel_status()` is what the node reports in diagnostics.
Kernels: W4A4 GEMM (kernels/w4a4_gemm_triton.py), attention over the INT8 KV cache
(kernels/int8_kv_attention_triton.py), and, used in every precision: the self-attention input
epilogue (kernels/qkv_rope_triton.py: bias, normalize, scale, RoPE into the attention's buffers), the
modulated LayerNorm (kernels/adaln_triton.py) and the VAE decoder's GroupNorm + SiLU (kernels/group_norm_triton.py).
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings

import torch

_STATE = {"loaded": False, "w4a4": None, "attn_int8": None, "reason": "not loaded yet"}


def kernel_module(name: str):
    """kernels/<name>.py as var_gen_ros_kernels.<name>: installed (setup.py maps the package), or from the
    source checkout beside this package, registered under the same package name so that the kernel
    modules' relative imports (kernels/launch.py) resolve.

    Why never as a top-level `kernels`: that name belongs to Hugging Face's `kernels` package, which
    transformers (from 5.25) imports whenever it is installed, and which it requires. kernels/ therefore
    has no __init__.py: a folder without one found first on sys.path (the repository root, e.g. under
    `python -m pytest`) gives way to an installed package of the same name."""
    try:
        return importlib.import_module(f"var_gen_ros_kernels.{name}")
    except ImportError:
        pass
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "kernels")
    if not os.path.isfile(os.path.join(root, name + ".py")):
        raise ImportError(f"kernel source not found: kernels/{name}.py")
    spec = importlib.machinery.ModuleSpec("var_gen_ros_kernels", None, is_package=True)
    spec.submodule_search_locations = [root]
    sys.modules["var_gen_ros_kernels"] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"var_gen_ros_kernels.{name}")


# The kernels' oldest GPU: sm_80 (Ampere; the Jetson Orin is sm_87). Their INT8 and bf16 tensor-core dots
# need it: compiled for sm_75 (Turing), some do not build at all (Triton's matmul lowering fails on the
# qkv-epilogue GEMM; `python3 bench/target_compile.py --arch 75`), so an older GPU runs the reference
MIN_CAPABILITY = (8, 0)


def kernels_supported(capability) -> tuple:
    """(whether the compiled kernels run on a GPU of this compute capability, why not)."""
    major, minor = capability
    if tuple(capability) < MIN_CAPABILITY:
        return False, (f"compute capability {major}.{minor}: the kernels need sm_{MIN_CAPABILITY[0]}{MIN_CAPABILITY[1]} "
                       "or newer (INT8 / bf16 tensor-core MMA)")
    return True, ""


def _load():
    if _STATE["loaded"]:
        return
    _STATE["loaded"] = True
    if os.environ.get("VAR_GEN_KERNELS", "1") == "0":
        _STATE["reason"] = "disabled by VAR_GEN_KERNELS=0"
        return
    try:
        if not torch.cuda.is_available():
            _STATE["reason"] = "no CUDA device"
            return
        ok, why = kernels_supported(torch.cuda.get_device_capability())
        if not ok:
            _STATE["reason"] = why
            warnings.warn(f"var_gen_ros: compiled kernels not used, running the PyTorch reference: {why}")
            return
        gemm = kernel_module("w4a4_gemm_triton")
        _STATE["w4a4"], _STATE["w4a4_module"] = gemm.w4a4_linear, gemm
        probe = torch.empty(0, device="cuda")
        _STATE["w4a4_path"] = gemm.default_path(probe) + " mma"
        large = gemm.path_for(torch.empty(1 << 20, 0, device="cuda"))   # the path a 1M-row call takes
        if large.startswith("i8"):
            _STATE["w4a4_path"] = ("i8: int8 mma over all of K on two-level scales (q·m); free-scale checkpoints: "
                                   + _STATE["w4a4_path"])
        elif large.startswith("f16"):
            _STATE["w4a4_path"] += f"; fp16 mma on exactly dequantized operands from {gemm.F16_MIN_M} rows"
        attn = kernel_module("int8_kv_attention_triton")
        _STATE["attn_int8"], _STATE["kv_store_int8"] = attn.int8_kv_attention, attn.int8_kv_store
        _STATE["attn_int8_sdpa"] = attn.int8_kv_attention_sdpa
        _STATE["qkv_rope"] = kernel_module("qkv_rope_triton").qkv_rope
        _STATE["adaln"] = kernel_module("adaln_triton").adaln
        _STATE["int4_dequant"] = kernel_module("int4_dequant_triton").int4_dequant
        _STATE["group_norm"] = kernel_module("group_norm_triton").group_norm
        _STATE["reason"] = "triton"
        _seed_tuned_picks([gemm, attn])
    except Exception as e:   # no triton, no compiler, bad source: the reference still works
        _STATE["reason"] = f"unavailable ({type(e).__name__}: {e})"
        warnings.warn(f"var_gen_ros: W4A4 kernels unavailable, using the PyTorch reference: {e}")


def _seed_tuned_picks(modules):
    """The autotuned kernels' launch configurations shipped for this GPU model (kernels/tuned_picks.py): a fresh
    install then compiles its kernels but does not autotune them. A bad table or VAR_GEN_TUNED_PICKS path is
    reported once and the kernels tune as without one."""
    try:
        _STATE["tuned_picks"] = kernel_module("tuned_picks").seed_modules(
            modules, torch.cuda.get_device_name(), capability=torch.cuda.get_device_capability())
    except Exception as e:
        _STATE["tuned_picks"] = f"not used ({type(e).__name__}: {e}); the first calls autotune"
        warnings.warn(f"var_gen_ros: shipped autotuning picks not used: {e}")


def _tuned_picks_status() -> str:
    s = _STATE.get("tuned_picks", "not loaded")
    return s if isinstance(s, str) else s.describe()


def w4a4_kernel(x):
    """The kernel function for a W4A4 forward on x's device, or None for the reference."""
    if not x.is_cuda:
        return None
    _load()
    return _STATE["w4a4"]


def int8_attention_kernel(q):
    """The INT8-KV attention kernel for queries q, or None for the reference (dequantize + SDPA)."""
    if not q.is_cuda or q.dtype not in (torch.bfloat16, torch.float16) or q.shape[-1] not in (16, 32, 64, 128, 256):
        return None
    _load()
    return _STATE["attn_int8"]


# From this many queries on (per batch and head), inside a CUDA graph, the INT8-KV attention dequantizes
# each group of heads' K/V into a bounded bf16 buffer and runs SDPA (cuDNN's fused attention on Hopper)
# instead of the Triton kernel, which dequantizes in registers: 1.12x faster at 1024 queries and up to
# 1.32x at 4096 on the H100 in GPU time, slower below (docs/BENCHMARKS.md, eleventh session). Only in a
# graph: launched eagerly it costs ~0.3 ms of host time per head group (cuDNN's forward alone ~0.1 ms),
# which made the eager large scales of a 1024² generation 40 % slower (host-bound). 0 turns it off.
KV_SDPA_MIN_LQ = int(os.environ.get("VAR_GEN_KV_SDPA_MIN_LQ", "1024"))
# Eagerly too from this many queries: there one head group's GPU time (~0.36 ms at the 4096-query scale
# of 1024², 14617 keys) covers its host time, so cuDNN's faster core is not hidden behind launches.
# 0: graphs only. VAR_GEN_KV_SDPA_EAGER=1 (bench/device/sdpa_eager_round.sh): eagerly at every size.
KV_SDPA_EAGER_MIN_LQ = (1 if os.environ.get("VAR_GEN_KV_SDPA_EAGER", "0") == "1"
                        else int(os.environ.get("VAR_GEN_KV_SDPA_EAGER_MIN_LQ", "0")))


_SDPA_WARM = set()


def int8_attention_sdpa(q, n_keys: int):
    """The dequantize-per-head-group + SDPA attention over the INT8 cache for queries q (B, H, Lq, c) and
    n_keys keys when it is the faster path (many queries, captured in a CUDA graph), else None
    (`int8_attention_kernel`). Each shape also takes it once eagerly, so that its first call (Triton's
    compile, cuDNN's plan) never happens during a capture."""
    if KV_SDPA_MIN_LQ <= 0 or q.shape[2] < KV_SDPA_MIN_LQ or int8_attention_kernel(q) is None:
        return None
    key = (tuple(q.shape), n_keys, q.dtype, q.device)
    eager_too = 0 < KV_SDPA_EAGER_MIN_LQ <= q.shape[2]
    if not torch.cuda.is_current_stream_capturing() and not eager_too:
        if key in _SDPA_WARM:
            return None
        _SDPA_WARM.add(key)
    return _STATE.get("attn_int8_sdpa")


def int8_kv_store_kernel(k):
    """The kernel that quantizes K/V into the INT8 cache with static scales, or None for the reference."""
    if not k.is_cuda or k.shape[-1] not in (16, 32, 64, 128, 256):
        return None
    _load()
    return _STATE.get("kv_store_int8")


def qkv_rope_kernel(x):
    """The fused qkv epilogue (bias, normalize, scale, RoPE, written into the attention's (B, H, L, c)
    buffers) for activations x, or None for the reference (`SelfAttention.qkv`)."""
    if not x.is_cuda or x.dtype == torch.float64:     # (the kernels compute in float32)
        return None
    _load()
    return _STATE.get("qkv_rope")


def w4a4_qkv_kernel(x, layer, head_dim: int):
    """The self-attention's qkv projection with its input epilogue inside the W4A4 GEMM (`w4a4_qkv_rope`
    in kernels/w4a4_gemm_triton.py: the projection's output is never stored) for x and the W4A4 layer,
    or None (the projection, then `qkv_rope_kernel`): large slices on the i8 workspace path only."""
    if not x.is_cuda or getattr(layer, "act_bits", None) != 4 or not hasattr(layer, "qweight"):
        return None
    _load()
    gemm = _STATE.get("w4a4_module")
    if gemm is None or not gemm.qkv_fusable(x, layer, head_dim):
        return None
    return gemm.w4a4_qkv_rope


def w4a4_ffn_kernel(x, fc1, fc2):
    """The FFN's two W4A4 layers with fc2's row pass made in fc1's GEMM epilogue (`w4a4_ffn` in
    kernels/w4a4_gemm_triton.py, VAR_GEN_W4A4_FC2_STATS), or None: the layers one after the other."""
    if not x.is_cuda:
        return None
    _load()
    gemm = _STATE.get("w4a4_module")
    if gemm is None or not gemm.ffn_stats_apply(fc1, fc2):
        return None
    return gemm.w4a4_ffn


def w4a4_workspaces_kept(x):
    """A context inside which W4A4 layers on the kernels' i8w path unpack their int8 weight workspace once
    and reuse it (`workspaces_kept` in kernels/w4a4_gemm_triton.py): for the slices of one scale, which call
    the same layers several times. A no-op context on the reference."""
    return _w4a4_context(x, "workspaces_kept")


def w4a4_workspaces_ahead(x):
    """A context inside which W4A4 layers on the kernels' i8w path have their int8 weight workspace unpacked on a
    side stream while the layer before them runs (`workspaces_ahead` in kernels/w4a4_gemm_triton.py, with
    VAR_GEN_W4A4_UNPACK_AHEAD=1): for one scale's block loop. A no-op context on the reference."""
    return _w4a4_context(x, "workspaces_ahead")


def w4a4_host_bound(x):
    """A context inside which W4A4 calls are eager launches bound by the host's time (`host_bound` in
    kernels/w4a4_gemm_triton.py: the Triton GEMMs, whose launches are cheaper, instead of the Gluon ones). A no-op
    context on the reference."""
    return _w4a4_context(x, "host_bound")


def _w4a4_context(x, name: str):
    """The W4A4 kernels' context `name` for x's device, or a no-op one where the reference runs."""
    if not x.is_cuda:
        return contextlib.nullcontext()
    _load()
    gemm = _STATE.get("w4a4_module")
    return contextlib.nullcontext() if gemm is None else getattr(gemm, name)()


def adaln_kernel(x):
    """The modulated LayerNorm kernel (LN, optional affine, AdaLN scale/shift, cast) for x, or None for
    the reference (`model.modulated_norm`'s PyTorch ops)."""
    if not x.is_cuda or x.dtype == torch.float64:
        return None
    _load()
    return _STATE.get("adaln")


def group_norm_kernel(x):
    """The VAE's GroupNorm (+ SiLU) kernel for x, or None for the reference (F.group_norm, F.silu)."""
    if not x.is_cuda or x.dtype == torch.float64:
        return None
    _load()
    return _STATE.get("group_norm")


def int4_dequant_kernel(packed):
    """The text encoder's INT4 weight dequantization kernel for `packed` (uint8 codes), or None for the
    reference (`Int4WeightLinear.dequantized`)."""
    if not packed.is_cuda:
        return None
    _load()
    return _STATE.get("int4_dequant")


def env_overrides(environ=None) -> str:
    """The VAR_GEN_* settings in the environment (the kernels' switches and limits, read at import), as
    "NAME=value, ...", or "": an experimental flag or a default turned off (VAR_GEN_W4A4_SWAR=0) or a moved threshold
    changes what runs, so the diagnostics that name the kernels name these too."""
    env = os.environ if environ is None else environ
    return ", ".join(f"{k}={env[k]}" for k in sorted(env) if k.startswith("VAR_GEN_"))


def kernel_status() -> str:
    _load()
    overrides = env_overrides()
    if overrides:
        return _kernel_status() + f"; environment: {overrides}"
    return _kernel_status()


def _gluon_status(gemm) -> str:
    """The Gluon GEMMs (on by default on sm_90), as of now: each turns itself off after a launch this GPU cannot run
    (`w4a4_gemm_triton._gluon_failed`)."""
    if gemm is None or torch.cuda.get_device_capability() != (9, 0):
        return ""
    failed = gemm.GLUON_FAILED
    if (gemm.GLUON_I8P or gemm.GLUON_I8W) and gemm._gluon() is None:
        return "; the Gluon GEMMs asked for, but this Triton has no Gluon"
    out = ""
    if gemm.GLUON_I8P:
        out += f"; {gemm.I8P_MIN_M}-{gemm.I8P_MAX_M} rows: Gluon i8p (packed codes made in the K loop, asynchronous wgmma)"
        swap256 = min(getattr(gemm._gluon(), "SWAP256_MAX_M", 0), gemm.I8P_MAX_M)
        if swap256 > 128:
            out += f", from 129 to {swap256} rows in swapped tiles of 256 x rows"
    elif "i8p" in failed:
        out += f"; Gluon i8p off after a failure ({failed['i8p']})"
    if gemm.GLUON_I8W:
        out += f"; i8w GEMM in Gluon from {gemm.GLUON_I8W_MIN_M} rows (asynchronous wgmma)"
    elif "i8w" in failed:
        out += f"; Gluon i8w off after a failure ({failed['i8w']})"
    if getattr(gemm, "FC2_STATS", False) and (gemm.GLUON_I8P or gemm.GLUON_I8W):
        out += "; the FFN's fc2 row pass made in fc1's Gluon epilogue"
    return out


def _kernel_status() -> str:
    if _STATE["w4a4"] is None:
        return f"pytorch reference ({_STATE['reason']})"
    gemm = _STATE.get("w4a4_module")
    gemm_qkv = getattr(gemm, "QKV_EPILOGUE", False)
    eager = (f", eagerly from {max(KV_SDPA_MIN_LQ, KV_SDPA_EAGER_MIN_LQ)}" if KV_SDPA_EAGER_MIN_LQ > 0 else "")
    sdpa = (f"; in CUDA graphs from {KV_SDPA_MIN_LQ} queries{eager} its K/V dequantized per head group by "
            "triton, then SDPA" if KV_SDPA_MIN_LQ > 0 else "")
    small = ""
    if gemm is not None and getattr(gemm, "SMALL_M_MAX", 0) > 0:
        # the CUDA C++ small-M kernel is built on the first call that wants it: report its state as of now
        narrow = min(max(gemm.SMALL_M_MAX, getattr(gemm, "SMALL_M_MAX_NARROW", 0)), gemm.small_m.MAX_M)
        pdl = ", " + gemm.small_m.pdl_status()
        small = (f"; up to {min(gemm.SMALL_M_MAX, gemm.small_m.MAX_M)} rows ({narrow} where N <= 3K) cuda c++ "
                 f"(kernels/w4a4_small_m.cu: {gemm.small_m.build_status()}{pdl})")
    if gemm is not None and getattr(gemm, "QUANT_CUDA_MAX_M", 0) > 0:
        small += (f"; its activations' quantizer up to {min(gemm.QUANT_CUDA_MAX_M, gemm.small_m.MAX_M)} rows cuda c++ "
                  f"(kernels/w4a4_quantize_small_m.cu: {gemm.small_m.build_status()})")
    return (f"w4a4 gemm: triton ({_STATE['w4a4_path']}){_gluon_status(gemm)}{small}, int8-kv attention: triton "
            f"(static scales, and its INT8 store; dynamic uses the reference{sdpa}), "
            "qkv epilogue, modulated LayerNorm, the INT4 text encoder's dequantization and the VAE's GroupNorm + "
            "SiLU: triton"
            + ("; the qkv epilogue inside the W4A4 GEMM from its workspace path's rows" if gemm_qkv else "")
            + ("; the int8 weight workspaces unpacked ahead on a side stream" if getattr(gemm, "UNPACK_AHEAD", False)
               else "")
            + f"; shipped launch configurations: {_tuned_picks_status()}")
