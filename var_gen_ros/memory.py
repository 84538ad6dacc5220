"""Memory counted by an allocator, on the GPU and on the CPU (ROS-free).

`AllocationMeter(device)`: `allocated()` (bytes live now), `peak()` (most live since `reset_peak()`).
- CUDA: the caching allocator's own counters (torch.cuda.memory_allocated / max_memory_allocated).
- CPU: PyTorch keeps no such counters, so the meter watches every storage that an aten op creates
  while it is active (a TorchDispatchMode) and drops it when PyTorch frees it (a storage's Python
  object lives exactly as long as the storage). Only tensors created inside `with meter:` count;
  build the model inside it too. Used by the CPU test of the edge benchmark's memory accounting.
"""
from __future__ import annotations

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
