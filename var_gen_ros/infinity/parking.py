"""Weights kept in a file on a disk between uses instead of in memory: "run, then freed" (Generator.offload_to_disk).

Why: the text encoder runs once per new prompt, for ~30 ms, the transformer's text-only layers once per prompt and
the VAE once per image; between those uses they sit idle through the scales. On a Jetson their weights (0.67, 0.66
and 0.15 GiB at 8B W4A4 with the INT4 encoder) come out of the same 16 GB as the KV cache and the robot's other
nodes, and moving them to the CPU frees nothing there (one DRAM). Parked, they live in a safetensors file; a use
reads them back onto the device and frees them after, so the scales' peak no longer holds them. The price is the
read at each use (reported).

`ParkedWeights(module, path)` writes every parameter and buffer of `module` to `path` once and leaves meta
tensors of the same shapes in their place; `with parked.loaded():` puts the real tensors back for the block.
Tensors shared between modules (tied weights) are written once and shared again when loaded. The file must be
on a disk, not a tmpfs (which is RAM): `tmpfs_warning` says so when it is. It stays open while parked and is read
through that descriptor, so that a file removed from its directory, or replaced, is still the one read.

The file is a safetensors file of two uint8 tensors, each the bytes of one block in the layout it loads into: the
large tensors' block (which may go into a borrowed memory pool) and the small ones' (biases, group scales, norms).
A load is two reads (staged_read.py), not one per tensor: the INT4 text encoder alone has hundreds of small ones.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import os
import threading
import time

import torch
from torch import nn

from .staged_read import read_into


# tensors of this many bytes or more are loaded into one block (the rest, biases and group scales, into another, outside
# a borrowed pool): one allocation that a borrowed memory pool's free block holds whole, where hundreds of small ones
# would each take the allocator's small-block segments of that pool and stay there
LARGE = 1 << 20


# the file's two tensors: the large tensors' bytes and the small ones', each laid out as the block it loads into
BLOCK_KEY = "__large_tensors_block__"
SMALL_KEY = "__small_tensors_block__"


def _pad(n: int) -> int:
    return -(-n // 512) * 512


def tmpfs_warning(path: str) -> str:
    """A warning if `path`'s directory is on a RAM-backed filesystem (tmpfs, ramfs), else ""."""
    try:
        d = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        best, fstype = "", ""
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (d == parts[1] or d.startswith(parts[1].rstrip("/") + "/")) \
                        and len(parts[1]) > len(best):
                    best, fstype = parts[1], parts[2]
    except OSError:
        return ""
    if fstype in ("tmpfs", "ramfs"):
        return (f"{path} is on {fstype} ({best}), which is memory: the parked weights free nothing there; "
                "point it at a disk")
    return ""


def write_held(path: str, write) -> int:
    """`write(tmp)` to a temporary name beside `path`, then that file opened, share-locked (flock) and renamed to
    `path`: returns the open descriptor, whose lock holds while this process keeps it open (and goes however the
    process ends). So a file under its final name is held whenever its owner runs (`remove_unheld`). A write that
    fails leaves no file."""
    import fcntl
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = None
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.rename(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return fd


def remove_unheld(directory: str, names, tmp_age_s: float = 3600.0) -> list:
    """Removes the files of `directory` whose names match `names` (a compiled regex) and that no process holds
    (write_held): those a process left when it died without removing them (killed, crashed: no cleanup ran). Their
    temporary files too, once `tmp_age_s` old and unheld (a write in progress is not held yet). Nothing else is
    touched. Returns the removed paths."""
    import fcntl
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed = []
    for n in entries:
        tmp = n.endswith(".tmp") and names.match(n.rsplit(".", 2)[0]) is not None
        if not (names.match(n) or tmp):
            continue
        p = os.path.join(directory, n)
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue                       # (gone already, or not a file of ours to read)
        try:
            if tmp and time.time() - os.fstat(fd).st_mtime < tmp_age_s:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue                   # held: its process runs (this one's too: a second open is a second lock)
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
                removed.append(p)
        finally:
            os.close(fd)
    return removed


class ParkedWeights:
    def __init__(self, module: nn.Module, path: str):
        from safetensors.torch import save_file
        self.module, self.path = module, path
        self._keepers = [m for m in module.modules() if hasattr(m, "weights_loaded")]   # (see _put)
        self.large = LARGE        # (read once: the file's layout follows it)
        self._slots = []          # (module, "p" | "b", name, key)
        self._meta = {}           # key -> (shape, dtype)
        keys, tensors = {}, {}
        self.device = None
        for mname, m in module.named_modules():
            for kind, table in (("p", m._parameters), ("b", m._buffers)):
                for name, t in table.items():
                    if t is None:
                        continue
                    key = keys.get(id(t))
                    if key is None:
                        key = keys[id(t)] = f"{mname}.{name}" if mname else name
                        tensors[key] = t.detach().to("cpu", copy=True).contiguous()
                        self.device = self.device or t.device
                        self._meta[key] = (tuple(t.shape), t.dtype)
                    self._slots.append((m, kind, name, key))
        if not tensors:
            raise ValueError("nothing to park: the module has no parameters or buffers")
        sizes = self._sizes()
        self.nbytes = sum(sizes.values())
        blocks = {}
        for key, large in ((BLOCK_KEY, True), (SMALL_KEY, False)):   # each tensor's bytes at its place in its block
            total = self.large_bytes if large else self.small_bytes
            if total:
                block, offset = torch.zeros(total, dtype=torch.uint8), 0
                for k, n in sizes.items():
                    if (n >= self.large) == large:
                        block[offset:offset + n].copy_(tensors.pop(k).reshape(-1).view(torch.uint8))
                        offset += _pad(n)
                blocks[key] = block
        tensors = blocks
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            # the file kept open and held: a file removed from the directory while the process runs (a cache cleaner,
            # `rm`) stays readable through this descriptor, so the weights, which are nowhere else, are not lost (its
            # disk space comes back when the descriptor is closed); and its lock tells remove_unheld that it is in use
            self._fd = write_held(path, lambda tmp: save_file(tensors, tmp))
        except Exception as e:     # safetensors' own error type for I/O: say which file, as an OSError
            raise OSError(f"{path}: the offloaded weights could not be written: {e}") from e
        del tensors
        self.loads, self.load_s = 0, 0.0
        self.prefetched = 0       # loads whose read ran beside other work (prefetch)
        self._lock = threading.Lock()
        self._depth = 0
        self._put({k: torch.empty(shape, dtype=dt, device="meta") for k, (shape, dt) in self._meta.items()})
        self._empty_cache()

    def _put(self, tensors: dict) -> None:
        # layers that keep values derived from their weights (W4A4Linear.derived: the weight units, 1/λ) keep them
        # across the park and the load, which give back the same bits, instead of making them again at each load
        parking = next(iter(tensors.values())).device.type == "meta"
        if parking:
            for m in self._keepers:
                m.weights_parking()
        made = {}
        for m, kind, name, key in self._slots:
            if kind == "p":
                p = made.get(key)
                if p is None:
                    p = made[key] = nn.Parameter(tensors[key], requires_grad=False)
                m._parameters[name] = p
            else:
                m._buffers[name] = tensors[key]
        if not parking:
            for m in self._keepers:
                m.weights_loaded()

    def _empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()        # give the freed blocks back (on a Jetson: to the other processes)

    @property
    def resident(self) -> bool:
        return self._depth > 0

    @property
    def large_bytes(self) -> int:
        """Bytes of the one block the tensors of LARGE bytes or more are loaded into (each start 512-byte aligned)."""
        return sum(_pad(n) for n in self._sizes().values() if n >= self.large)

    @property
    def small_bytes(self) -> int:
        """Bytes of the block the other tensors are loaded into (each start 512-byte aligned, as the allocator's)."""
        return sum(_pad(n) for n in self._sizes().values() if n < self.large)

    def _sizes(self) -> dict:
        return {k: math.prod(shape) * dt.itemsize for k, (shape, dt) in self._meta.items()}

    def _ranges(self) -> dict:
        """{tensor name: (file offset, bytes)} from the file's safetensors header (8 bytes of its length, then JSON)."""
        head = bytearray(8)
        n = os.preadv(self._fd, [head], 0)
        size = int.from_bytes(head, "little")
        if n < 8 or not 2 <= size <= os.fstat(self._fd).st_size - 8:
            raise ValueError("no safetensors header")
        text = bytearray(size)
        if os.preadv(self._fd, [text], 8) < size:
            raise ValueError("its header is cut short")
        out = {}
        for k, v in json.loads(bytes(text)).items():
            if k != "__metadata__":
                begin, end = v["data_offsets"]
                out[k] = (8 + size + begin, end - begin, v["dtype"])
        return out

    def _allocate(self, pool_context) -> list:
        """[(block name, its empty uint8 tensor, its file offset)]: the large tensors' block (parking.LARGE bytes or
        more) allocated inside `pool_context()` (when given), the small ones' outside it; the file's header checked."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: the offloaded weights' file was closed")
        try:
            ranges = self._ranges()
        except (OSError, ValueError, KeyError, TypeError) as e:     # not safetensors, truncated: say which file
            raise RuntimeError(f"{self.path}: the offloaded weights could not be read: {e}") from e
        changed = f"{self.path}: the file was changed since the weights were offloaded"
        out = []
        for key, nbytes, pool in ((BLOCK_KEY, self.large_bytes, pool_context), (SMALL_KEY, self.small_bytes, None)):
            if not nbytes:
                continue
            if key not in ranges:
                raise RuntimeError(f"{changed}: its {key} is missing")
            offset, stored, dtype = ranges[key]
            if dtype != "U8" or stored != nbytes:
                raise RuntimeError(f"{changed}: its {key} is {dtype} x {stored}, not U8 x {nbytes}")
            with pool() if pool is not None and self.device.type == "cuda" else contextlib.nullcontext():
                out.append((key, torch.empty(nbytes, dtype=torch.uint8, device=self.device), offset))
        return out

    def _fill(self, blocks: list) -> dict:
        """Reads the file into `_allocate`'s blocks (on the current stream); {block name: block}."""
        for _, block, offset in blocks:
            try:
                read_into(self._fd, offset, block)
            except (OSError, EOFError) as e:
                raise RuntimeError(f"{self.path}: the offloaded weights could not be read: {e}") from e
        return {key: block for key, block, _ in blocks}

    def _load(self, pool_context) -> dict:
        """The tensors from the file: views of two blocks, each filled by one read (see _allocate)."""
        return self.views(self._fill(self._allocate(pool_context)))

    def prefetch(self, pool_context=None) -> "Prefetch":
        """Begins reading the weights in the background (a side stream on a GPU), into blocks allocated now, on the
        caller's stream and inside `pool_context()` as `loaded` would; `loaded(prefetched=...)` waits for the read and
        puts them in. For a read that overlaps other work of the caller's (the text encoder's compute)."""
        return Prefetch(self, self._allocate(pool_context))

    def views(self, blocks: dict) -> dict:
        """{tensor name: its view} of the two blocks ({BLOCK_KEY: ..., SMALL_KEY: ...}, uint8, as the file holds them)."""
        out, offsets = {}, {BLOCK_KEY: 0, SMALL_KEY: 0}
        for k, n in self._sizes().items():
            key = BLOCK_KEY if n >= self.large else SMALL_KEY
            shape, dt = self._meta[k]
            out[k] = blocks[key][offsets[key]:offsets[key] + n].view(dt).view(shape)
            offsets[key] += _pad(n)
        return out

    @contextlib.contextmanager
    def loaded(self, empty_cache: bool = True, pool_context=None, prefetched: "Prefetch" = None):
        """The module with its real weights on its device for the block; parked again after it (nested and
        concurrent blocks share one load). `pool_context`: a context manager factory (torch.cuda.use_mem_pool of a
        pool) around the allocation of the one block the large tensors share; the small ones, and whatever the
        block's code allocates, stay outside it. empty_cache=False keeps the freed blocks in the allocator (a
        caller that loads into a memory pool it reuses at once). `prefetched`: this object's `prefetch()`, whose
        blocks are put in once its read is done (the time waited for it is the load's time)."""
        with self._lock:
            if self._depth == 0:
                t = time.perf_counter()
                if prefetched is not None:
                    self._put(self.views(prefetched.result()))
                    self.prefetched += 1
                else:
                    self._put(self._load(pool_context))
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.loads += 1
                self.load_s += time.perf_counter() - t
            self._depth += 1
        try:
            yield self.module
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._put({k: torch.empty(shape, dtype=dt, device="meta") for k, (shape, dt) in self._meta.items()})
                    if empty_cache:
                        self._empty_cache()

    def restore(self) -> None:
        """The weights back in the module for good (its large tensors views of one block) and the file removed: for
        undoing an offload that could not be finished. The object is not to be used after."""
        with self._lock:
            self._put(self._load(None))
        self.close()

    def status(self) -> str:
        ahead = f" ({self.prefetched} read beside the text encoder)" if self.prefetched else ""
        return (f"parked in {self.path} ({self.nbytes / 2**30:.2f} GiB), loaded {self.loads} times{ahead}, "
                f"{self.load_s / max(1, self.loads):.3f} s a load")

    def close(self) -> None:
        """Removes the file (the module stays parked and cannot be loaded again)."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_prefetcher = None     # one thread for the background reads (each read itself runs on staged_read's readers)


class Prefetch:
    """A read of parked weights into blocks already allocated (ParkedWeights.prefetch), run by a background thread on
    a side stream of the device, so that its copies do not queue behind the caller's kernels. `result()` waits for it
    and gives the blocks (the read's error, if it failed); `close()` waits and drops them. The blocks are allocated
    on the caller's stream and written on the side stream only after it has waited for the caller's stream, and the
    read's copies are complete when its thread ends: so they can be used and freed on the caller's stream."""

    def __init__(self, parked: ParkedWeights, blocks: list):
        global _prefetcher
        self._blocks = blocks
        stream = None
        if parked.device.type == "cuda":
            stream = torch.cuda.Stream(parked.device)
            stream.wait_stream(torch.cuda.current_stream(parked.device))
        if _prefetcher is None:
            _prefetcher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="var_gen_ros_prefetch")
        self._future = _prefetcher.submit(self._read, parked, stream)

    def _read(self, parked, stream) -> dict:
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            return parked._fill(self._blocks)

    def result(self) -> dict:
        future, self._future = self._future, None      # (neither it nor this object may keep the blocks alive)
        if future is None:
            raise RuntimeError("the prefetched weights were already taken")
        try:
            return future.result()
        finally:
            self._blocks = None

    def close(self) -> None:
        """Waits for the read (its error is dropped: the blocks are not used) and lets the blocks go."""
        future, self._future = self._future, None
        if future is not None:
            concurrent.futures.wait([future])
        self._blocks = None
