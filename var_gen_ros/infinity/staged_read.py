"""A byte range of an open file read into a tensor's memory, on the CPU or a CUDA device: the loads of offloaded
weights (parking.py).

Why: a load used to read its file through safetensors into pageable host memory and copy that to the GPU: every byte
copied twice on the host, then through the driver's own staging for pageable memory. The text encoder's 0.67 GiB took
0.13-0.14 s on the H100 machines (about 5 GB/s; thirty-first session), and a new prompt with the edge preset reads
three files. Here the bytes go from the page cache straight into a ring of pinned buffers (os.preadv, from a few
threads: it releases the GIL), and each filled buffer is copied to the device asynchronously, on the caller's stream,
while the next ones are read. A CPU destination is read into directly, in parallel chunks.

On the H100 host, from the page cache (bench/offload_reads.py, thirty-second session): 0.67 GiB in 29-32 ms with 8
buffers of 8 MiB and 8 readers, 36-39 ms with 4 and 4, 77-80 ms with one reader, against 70 ms by the pageable path
of the same two blocks; the loads before (one read per small tensor) took 130-140 ms on other H100 machines.

The pinned buffers (BUFFERS x CHUNK bytes per device, 64 MiB) are made at the first device read and kept: pinning
them again for every load would cost more than it saves. `release()` gives them back (Generator.close_parked: a
lifecycle cleanup).
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import threading

import torch

CHUNK = 8 << 20                          # bytes per read and per copy
BUFFERS = 8                              # pinned buffers in the ring
READERS = max(1, min(8, os.cpu_count() or 1))      # threads reading (a Jetson Orin has 6-12 cores)

_lock = threading.Lock()                 # one read at a time uses the ring and the readers
_readers = None                          # (READERS, the executor)
_buffers = {}                            # device index -> [pinned uint8 tensors]


def _pread_exact(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise EOFError(f"the file ends at byte {offset + done}, before byte {offset + len(view)}")
        done += n


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _readers
    if _readers is None or _readers[0] != READERS:
        if _readers is not None:
            _readers[1].shutdown()
        _readers = (READERS, concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="var_gen_ros_read"))
    return _readers[1]


def _ring(device: torch.device) -> list:
    index = device.index if device.index is not None else torch.cuda.current_device()
    ring = _buffers.get(index)
    if ring is None or len(ring) != BUFFERS or ring[0].numel() != CHUNK:
        ring = _buffers[index] = [torch.empty(CHUNK, dtype=torch.uint8, pin_memory=True) for _ in range(BUFFERS)]
    return ring


def release() -> None:
    """The pinned buffers and the reader threads given back (made again by the next read). PyTorch's pinned-memory
    allocator keeps freed blocks for reuse; they are returned to the system where this PyTorch can
    (`torch.accelerator.empty_host_cache`, which frees every unused cached pinned block of the process)."""
    global _readers
    with _lock:
        pinned = bool(_buffers)
        _buffers.clear()
        if _readers is not None:
            _readers[1].shutdown()
            _readers = None
        empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
        if pinned and empty is not None:
            empty()


def read_into(fd: int, offset: int, dst: torch.Tensor) -> None:
    """Fills `dst` (a contiguous uint8 tensor, on the CPU or a CUDA device) with the bytes of the file open as `fd`
    from `offset`. On a device the copies are queued on the current stream, in order after its work, and complete
    before this returns. A file that ends too soon raises EOFError; a failed read, OSError."""
    if dst.dtype != torch.uint8 or dst.dim() != 1 or not dst.is_contiguous():
        raise ValueError("dst must be a contiguous 1-D uint8 tensor")
    n = dst.numel()
    if n == 0:
        return
    starts = range(0, n, CHUNK)
    with _lock:
        pool = _pool()
        if dst.device.type == "cpu":
            view = memoryview(dst.numpy())
            futures = [pool.submit(_pread_exact, fd, view[s:s + CHUNK], offset + s) for s in starts]
            try:
                for f in futures:
                    f.result()
            finally:
                concurrent.futures.wait(futures)     # (none still writing into dst when this returns)
            return
        ring = _ring(dst.device)
        stream = torch.cuda.current_stream(dst.device)
        copied = [None] * len(ring)               # per buffer: the event after its last copy
        pending = collections.deque()             # (start, length, buffer, future) in file order
        i = 0
        try:
            while i < len(starts) or pending:
                # keep every buffer busy: a buffer is read into again once its last copy has left it
                while i < len(starts) and len(pending) < len(ring):
                    b = i % len(ring)
                    if copied[b] is not None:
                        copied[b].synchronize()
                    s = starts[i]
                    k = min(CHUNK, n - s)
                    view = memoryview(ring[b].numpy())[:k]
                    pending.append((s, k, b, pool.submit(_pread_exact, fd, view, offset + s)))
                    i += 1
                s, k, b, future = pending.popleft()
                future.result()
                dst[s:s + k].copy_(ring[b][:k], non_blocking=True)
                copied[b] = torch.cuda.Event()
                copied[b].record(stream)
        finally:
            # on an error too: no read may still be writing into a buffer, nor a copy reading one, when the next
            # read begins (and dst's bytes are all there when this returns)
            concurrent.futures.wait([p[3] for p in pending])
            for e in copied:
                if e is not None:
                    e.synchronize()
