"""Where the GPU kernels built at run time are kept between starts, and how full that store is.

Triton compiles its kernels and tunes their launch configurations on first use and keeps both on disk
(`TRITON_CACHE_DIR`, default `~/.triton/cache`); the small-M CUDA extension is built by `torch.utils.cpp_extension`
into `TORCH_EXTENSIONS_DIR`. With both empty, the first 8B generation on an H100 spent 310 s compiling and
autotuning (docs/BENCHMARKS.md, twenty-third session), and a robot whose home directory is not kept (a container, a
read-only root) would pay that at every start. `use_kernel_cache(root)` puts both under one directory that is kept;
`kernel_cache_status()` says what is in it, for the node's diagnostics. Both only read or set environment variables
(Triton and torch read them when they compile), so they work before either is imported.
"""
from __future__ import annotations

import glob
import os


def use_kernel_cache(root: str) -> dict:
    """Points Triton's cache and torch's extension builds at `root`/triton and `root`/torch_extensions (made if
    missing; an OSError names the path that cannot be). Returns the variables set."""
    root = os.path.abspath(os.path.expanduser(root))
    dirs = {"TRITON_CACHE_DIR": os.path.join(root, "triton"),
            "TORCH_EXTENSIONS_DIR": os.path.join(root, "torch_extensions")}
    for var, path in dirs.items():
        os.makedirs(path, exist_ok=True)
        os.environ[var] = path
    return dirs


def triton_cache_dir() -> str:
    """The directory Triton's cache manager uses (its own rule: TRITON_CACHE_DIR, else TRITON_HOME or the home
    directory, then .triton/cache)."""
    if os.environ.get("TRITON_CACHE_DIR"):
        return os.environ["TRITON_CACHE_DIR"]
    return os.path.join(os.environ.get("TRITON_HOME") or os.path.expanduser("~/"), ".triton", "cache")


def kernel_cache_status() -> dict:
    """What a start finds: Triton's compiled kernels (cubins) and autotuning picks in its cache, and the extension
    build directory. No picks means the first generation on a GPU autotunes every kernel it meets."""
    tdir = triton_cache_dir()
    return {"triton_cache": tdir,
            "compiled_kernels": len(glob.glob(os.path.join(tdir, "*", "*.cubin"))),
            "autotune_picks": len(glob.glob(os.path.join(tdir, "*", "*.autotune.json"))),
            "torch_extensions": os.environ.get("TORCH_EXTENSIONS_DIR", "") or "torch's default"}


def describe(status: dict) -> str:
    return (f"{status['triton_cache']}: {status['compiled_kernels']} compiled kernels, {status['autotune_picks']} "
            f"autotuning picks at start; CUDA extensions in {status['torch_extensions']}")
