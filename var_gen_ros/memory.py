"""Memory counted by an allocator, on the GPU and on the CPU (ROS-free).

`AllocationMeter(device)`: `allocated()` (bytes live now), `peak()` (most live since `reset_peak()`).
- CUDA: the caching allocator's own counters (torch.cuda.memory_allocated / max_memory_allocated).
- CPU: PyTorch keeps no such counters, so the meter watches every storage that an aten op creates
  while it is active (a TorchDispatchMode) and drops it when PyTorch frees it (a storage's Python
  object lives exactly as long as the storage). Only tensors created inside `with meter:` count;
  build the model inside it too. Used by the CPU test of the edge benchmark's memory accounting.
"""
from __future__ import annotations

import os
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _CpuStorageTracker(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = {}           # id(storage) -> nbytes
        self.allocated = 0
        self.peak = 0

    def _free(self, key):
        n = self.live.pop(key, 0)
        self.allocated -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                key = id(st)
                if key not in self.live and st.nbytes() > 0:
                    self.live[key] = st.nbytes()
                    self.allocated += st.nbytes()
                    self.peak = max(self.peak, self.allocated)
                    weakref.finalize(st, self._free, key)
        return out


class AllocationMeter:
    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self._cpu = _CpuStorageTracker() if self.device.type == "cpu" else None

    def __enter__(self):
        if self._cpu is not None:
            self._cpu.__enter__()
        return self

    def __exit__(self, *exc):
        if self._cpu is not None:
            self._cpu.__exit__(*exc)
        return False

    def allocated(self) -> int:
        if self._cpu is not None:
            return self._cpu.allocated
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        if self._cpu is not None:
            return self._cpu.peak
        return torch.cuda.max_memory_allocated(self.device)

    def reset_peak(self) -> None:
        if self._cpu is not None:
            self._cpu.peak = self._cpu.allocated
        else:
            torch.cuda.reset_peak_memory_stats(self.device)

    def reserved(self) -> int:
        return 0 if self._cpu is not None else torch.cuda.memory_reserved(self.device)

    def peak_reserved(self) -> int:
        return 0 if self._cpu is not None else torch.cuda.max_memory_reserved(self.device)


def resident_check(meter: AllocationMeter, weight_bytes: int, resident_bytes: dict, extra: int = 0) -> dict:
    """At a scale boundary (a ScaleEvent's `resident_bytes`): what the allocator holds vs what the
    components add up to (weights + KV cache + scale state + `extra`, e.g. cached prompt features)."""
    components = weight_bytes + sum(resident_bytes.values()) + extra
    alloc = meter.allocated()
    return {"allocated": alloc, "components": components, "unaccounted": alloc - components,
            "relative": (alloc - components) / max(alloc, 1), **resident_bytes}


def process_memory() -> dict:
    """This process's host memory, bytes, from /proc/self/status ({} where there is no /proc: not Linux):
    resident now (`rss`, VmRSS), its high-water mark (`peak_rss`, VmHWM), and the resident split into
    anonymous pages (`rss_anon`: heap, Python objects, pinned buffers; what must stay in memory) and file
    pages (`rss_file`: mapped libraries such as cuBLAS and cuDNN, which the kernel can drop and re-read). A
    Jetson's CPU and GPU share one DRAM, so on the Orin this comes on top of the GPU allocator's bytes: the
    node reports both."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return {}
    out = {}
    for key, name in (("VmRSS", "rss"), ("VmHWM", "peak_rss"), ("RssAnon", "rss_anon"), ("RssFile", "rss_file")):
        if key in fields:
            value, unit = fields[key].split()
            out[name] = int(value) * {"kB": 1024}.get(unit, 1)
    return out


def device_memory_used(device) -> dict:
    """On a CUDA device: `used` (total minus free, as the driver sees it: every allocator and context on the
    device) and `non_pytorch` (used minus PyTorch's reserved bytes: the CUDA context, cuBLAS / cuDNN
    workspaces, Triton's modules, other processes)."""
    free, total = torch.cuda.mem_get_info(device)
    used = total - free
    return {"used": used, "non_pytorch": used - torch.cuda.memory_reserved(device)}


def trim_host_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc `malloc_trim`), after a garbage collection;
    False where there is no glibc. The edge proof and bench/host_footprint.py call it before reading
    `process_memory`, so that freed-but-kept heap pages are not counted as live: at 8B 1024² on the H100 it
    returned almost nothing (1.793 -> 1.784 GiB anonymous), so warm-up's host memory is live, not heap
    left over (docs/BENCHMARKS.md, fourteenth session)."""
    import ctypes
    import gc
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.malloc_trim(0))


def reserved_by_pool(names: dict = None, device=None) -> dict:
    """The CUDA caching allocator's segments summed per memory pool: {pool: {reserved, allocated, free, segments,
    largest_free_block}}, bytes. `names` maps pool ids (a torch.cuda.MemPool's `.id`, a graph pool handle) to
    labels; the default pool is "default", others "pool<a>_<b>". Why: the reserved peak is what a memory cap
    limits, and the gap between it and the allocated peak has two kinds of bytes. A CUDA graph's pool keeps the
    segments of the temporaries captured into it, which its replays use at the same addresses while the
    allocator counts them free. The default pool's free bytes are cache and fragmentation. Only the second kind
    can be trimmed. The sums equal torch.cuda.memory_reserved / memory_allocated of the device."""
    index = None if device is None else torch.device(device).index
    dev = torch.cuda.current_device() if index is None else index
    labels = {tuple(k): v for k, v in (names or {}).items() if k is not None}
    out = {}
    for seg in torch.cuda.memory_snapshot():
        if seg.get("device", dev) != dev:
            continue
        pid = tuple(seg.get("segment_pool_id", (0, 0)))
        label = "default" if pid == (0, 0) else labels.get(pid, "pool%d_%d" % pid)
        d = out.setdefault(label, {"reserved": 0, "allocated": 0, "segments": 0, "largest_free_block": 0})
        d["reserved"] += seg["total_size"]
        d["allocated"] += seg["allocated_size"]
        d["segments"] += 1
        for b in seg.get("blocks", ()):
            if b.get("state") == "inactive":
                d["largest_free_block"] = max(d["largest_free_block"], b["size"])
    for d in out.values():
        d["free"] = d["reserved"] - d["allocated"]
    return out


def live_blocks_by_site(snapshot: dict, roots=("var_gen_ros", "kernels", "bench", "test"), top: int = 30) -> list:
    """The live allocations of a CUDA allocator snapshot (`torch.cuda.memory._snapshot()` taken with
    `torch.cuda.memory._record_memory_history` on), summed by the innermost stack frame in this project's code
    (`roots`: path components) and by memory pool: [{"site", "pool", "bytes", "blocks"}], largest first, `top` of
    them. Blocks allocated before the recording began, or with no frame of ours, are "(no project frame)". Why:
    between generations the allocator holds, beside the weights and the kept KV caches, a few hundred MB that no
    component names (the edge proof's "prompt_features_and_base"); this says which code made them."""
    sites = {}
    for seg in snapshot.get("segments", ()):
        pid = tuple(seg.get("segment_pool_id", (0, 0)))
        pool = "default" if pid == (0, 0) else "pool%d_%d" % pid
        for b in seg.get("blocks", ()):
            if b.get("state") != "active_allocated":
                continue
            site = "(no project frame)"
            for f in b.get("frames", ()):
                parts = f.get("filename", "").replace("\\", "/").split("/")
                hit = [i for i, part in enumerate(parts) if part in roots]
                if hit:
                    site = f"{'/'.join(parts[hit[-1]:])}:{f.get('line')} {f.get('name', '')}"
                    break
            d = sites.setdefault((site, pool), {"site": site, "pool": pool, "bytes": 0, "blocks": 0})
            d["bytes"] += b["size"]
            d["blocks"] += 1
    return sorted(sites.values(), key=lambda d: -d["bytes"])[:top]


# The environment variables PyTorch reads its allocator settings from (the second is the newer, device-generic name).
ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def tegra_board(root: str = "/") -> bool:
    """Whether this machine is an NVIDIA Tegra board (a Jetson), from files only, so without a CUDA context:
    L4T's release file, or "nvidia,tegra" among the device tree's compatible strings."""
    if os.path.isfile(os.path.join(root, "etc", "nv_tegra_release")):
        return True
    try:
        with open(os.path.join(root, "proc", "device-tree", "compatible"), "rb") as f:
            return b"nvidia,tegra" in f.read()
    except OSError:
        return False


def _alloc_options(conf: str) -> list:
    """An allocator setting string ("key:value,key:value") as its options, spaces dropped."""
    return [o for o in conf.replace(" ", "").split(",") if o]


def _expandable_on(conf: str) -> bool:
    return "expandable_segments:true" in (o.lower() for o in _alloc_options(conf))


def guard_tegra_allocator(environ=None, tegra: bool = None) -> str:
    """On a Tegra board, turn the CUDA allocator's expandable segments off before the first allocation and
    say so; '' where there is nothing to do. Expandable segments map memory through CUDA's virtual-memory
    calls, which fail on Tegra boards with "CUDA driver error: out of memory" at the first small allocation
    (reported in unslothai/unsloth-zoo pull request 1235); on a discrete GPU they saved 0.38 GiB of reserved
    memory at the 8B edge proof (docs/BENCHMARKS.md, eighteenth session) and are left as set. The variable is
    rewritten (for child processes and an allocator not yet started) and, where CUDA is built in, the
    running allocator's setting too."""
    env = os.environ if environ is None else environ
    named = [v for v in ALLOC_CONF_VARS if _expandable_on(env.get(v, ""))]
    if not named or not (tegra_board() if tegra is None else tegra):
        return ""
    for v in named:
        opts = [o for o in _alloc_options(env[v]) if not o.startswith("expandable_segments:")]
        env[v] = ",".join(opts + ["expandable_segments:False"])
    if environ is None and torch.cuda.is_available():
        # the running allocator's setting (the name moved to torch._C's accelerator API in newer PyTorch)
        setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
        setter("expandable_segments:False")
    return (f"expandable segments turned off ({' and '.join(named)} asked for them): Tegra boards fail their "
            "virtual-memory mappings with 'CUDA driver error: out of memory'")
