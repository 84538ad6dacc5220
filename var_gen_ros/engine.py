"""The ROS-free serving engine: one Generator, a bounded request queue, one worker thread.

The node (and anything else) submits `Request`s and listens to `Listener` callbacks. Bad input is
rejected with a reason before it is queued; a failure inside generation (including a CUDA
out-of-memory) fails that request only, and the worker keeps serving. The exception is a GPU fault
(an illegal memory access, a trapped kernel, a device-side assert): CUDA's errors of that kind are
sticky, every later call in the process fails, so the engine fails the request and everything queued
with the reason, rejects new requests, and tells its listener (`on_gpu_fault`) so that the process
can restart.

Warm-up (`warm_up`) runs in the same worker, ahead of every request: throw-away generations whose first autotunes
and compiles the GPU kernels (minutes on a fresh machine: 310 s on an H100 with no cached picks) and whose second
captures the CUDA graphs. Requests submitted meanwhile queue behind it, so a node can be up, publishing its
diagnostics and accepting work, while it warms up.
"""
from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Deque, Optional

from .infinity.graphs import is_oom as _is_oom
from .infinity import sampler as _sampler
from .infinity.sampler import GenerationCancelled, GenerationResult, Generator, ScaleEvent

QUEUED, RUNNING, DONE, FAILED, CANCELLED, REJECTED = range(6)
STATE_NAMES = ["QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED", "REJECTED"]


class RequestRejected(ValueError):
    """The request is not queued; the message says why."""


@dataclass
class Request:
    prompt: str
    request_id: str = ""
    negative_prompt: Optional[str] = None
    seed: Optional[int] = None
    cfg: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    aspect_ratio: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    preview: bool = False
    listener: Optional["Listener"] = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)
    state: int = QUEUED
    error: str = ""
    result: Optional[GenerationResult] = None
    submitted_at: float = field(default_factory=time.monotonic)
    warmup: bool = False       # a throw-away generation of `Engine.warm_up`: not a user's, not counted in the stats
    run_s: float = 0.0         # wall seconds in the worker (kernel autotuning and graph capture included)


class Listener:
    """Override what you need. Called from the worker thread."""

    def on_state(self, req: Request) -> None: ...

    def on_scale(self, req: Request, ev: ScaleEvent) -> None: ...

    def on_gpu_fault(self, message: str) -> None: ...


@dataclass
class EngineStats:
    completed: int = 0
    errors: int = 0
    cancelled: int = 0
    rejected: int = 0
    last_latency_s: float = 0.0
    last_peak_memory: int = 0
    last_kv_cache_bytes: int = 0
    last_error: str = ""


class Engine:
    def __init__(self, generator: Generator, queue_size: int = 4, max_prompt_chars: int = 2000,
                 listener: Optional[Listener] = None, idle_release_s: float = 0.0):
        self.generator = generator
        self.queue_size = queue_size
        self.max_prompt_chars = max_prompt_chars
        self.listener = listener or Listener()
        self.stats = EngineStats()
        self._queue: Deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._current: Optional[Request] = None
        self._progress_at = 0.0     # monotonic time the running request started or last finished a scale
        self.gpu_fault = ""         # set once by a sticky CUDA error: nothing more can run in this process
        self.warmup_s: list = []    # seconds of each finished warm-up generation
        self.warmup_error = ""      # why warm-up stopped early ("" if it did not)
        # After this many seconds with nothing to run, the worker gives back what only a running generation needs:
        # the CUDA graphs with their pool and the KV caches kept for them (3.4 GiB + ~0.5 GiB for 8B at 1024²), and
        # the allocator's free memory; the model stays. On a Jetson that memory is the robot's DRAM. The next
        # request captures its graphs anew (about an eager generation's time), then replays. 0: never
        # (`set_idle_release`)
        self.idle_release_s = float(idle_release_s)
        self.idle_releases = 0      # how many times it did
        self.last_idle_release: dict = {}   # memory before and after the last one (`_memory_now`'s keys)
        self._idle_since = time.monotonic()
        self._idle_due = False      # a request ran since the last idle release
        # With offloaded weights (VAR_GEN_OFFLOAD_PRELOAD, on by default; =0 turns it off): once the queue is empty
        # after a request, the text encoder and the condition layers are loaded into the kept KV caches' dead block,
        # so that a new prompt waits for no read (Generator.preload_text_weights); `preload` says what the last try did
        self._preload_due = False
        self.preload = ""
        self._stop = False
        self._worker = threading.Thread(target=self._run, name="var_gen_worker", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------------- API
    def submit(self, req: Request) -> Request:
        if not req.request_id:
            req.request_id = uuid.uuid4().hex[:12]
        try:
            if self.gpu_fault:
                raise RequestRejected(f"not served: {self.gpu_fault}")
            if self._stop:
                raise RequestRejected("not served: the engine is closed (the model was unloaded)")
            self._validate(req)
        except RequestRejected as e:
            req.state, req.error = REJECTED, str(e)
            self.stats.rejected += 1
            self._notify(req)
            req.done_event.set()
            raise
        with self._cv:
            if self._user_queued() >= self.queue_size:
                req.state, req.error = REJECTED, f"queue full ({self.queue_size} waiting)"
                self.stats.rejected += 1
            else:
                self._queue.append(req)
                self._cv.notify()
        self._notify(req)
        if req.state == REJECTED:
            req.done_event.set()
            raise RequestRejected(req.error)
        return req

    def warm_up(self, runs: int, width: Optional[int] = None, height: Optional[int] = None,
                cfg: Optional[float] = None, prompt: str = "warm-up") -> list:
        """Queues `runs` throw-away generations ahead of every request (seeds 0, 1, ...; ids "warmup-1", ...) and
        returns them. They are not published by a node, not counted in `stats`, and not touched by `cancel` or
        `clear_queue`; their seconds go to `warmup_s`. If one fails, the rest are dropped (`warmup_error` says why)
        and the engine serves without them. Raises RequestRejected for a size or cfg the model cannot take."""
        reqs = [Request(prompt=prompt, request_id=f"warmup-{i + 1}", seed=i, width=width, height=height, cfg=cfg,
                        warmup=True) for i in range(int(runs))]
        for r in reqs:
            self._validate(r)
        with self._cv:
            self._queue.extendleft(reversed(reqs))
            self._cv.notify()
        return reqs

    @property
    def warming_up(self) -> bool:
        """Whether a warm-up generation is running or queued."""
        with self._cv:
            cur = self._current
            return (cur is not None and cur.warmup) or any(r.warmup for r in self._queue)

    def cancel(self, request_id: str = "") -> bool:
        """Cancel a queued request, or the running one (it stops after its current scale).
        An empty id means the running request. Warm-up generations are not cancelled."""
        with self._cv:
            cur = self._current
            if cur is not None and not cur.warmup and (not request_id or cur.request_id == request_id):
                cur.cancel_event.set()
                return True
            for r in list(self._queue):
                if r.request_id == request_id and not r.warmup:
                    self._queue.remove(r)
                    self._finish(r, CANCELLED, "cancelled while queued")
                    return True
        return False

    def clear_queue(self, reason: str = "", note: str = "queue cleared") -> int:
        """Drops every queued request: CANCELLED (`note`), or FAILED with `reason`; queued warm-ups
        too, but only with a reason (a GPU fault, an engine closing)."""
        with self._cv:
            goes = [bool(reason) or not r.warmup for r in self._queue]
            dropped = [r for r, g in zip(self._queue, goes) if g]
            kept = [r for r, g in zip(self._queue, goes) if not g]
            self._queue.clear()
            self._queue.extend(kept)
        for r in dropped:
            if reason:
                self._finish(r, FAILED, reason)
            else:
                self._finish(r, CANCELLED, note)
        return len(dropped)

    @property
    def queue_depth(self) -> int:
        """Requests waiting (queued warm-ups not counted)."""
        return self._user_queued()

    def _user_queued(self) -> int:
        return sum(not r.warmup for r in self._queue)

    @property
    def current(self) -> Optional[Request]:
        return self._current

    def stalled_for(self) -> float:
        """Seconds the running request has gone without finishing a scale (counted from its start, then from its
        last scale); 0.0 when nothing runs. Why: a generation waiting on a GPU that never finishes (a hung
        kernel) raises nothing; this is what the node's diagnostics compare with `stall_timeout_s`."""
        with self._cv:
            return time.monotonic() - self._progress_at if self._current is not None else 0.0

    def close(self, timeout: float = 10.0) -> None:
        self.clear_queue()
        self.clear_queue("engine closed")           # warm-ups not yet run
        with self._cv:
            self._stop = True
            if self._current is not None:
                self._current.cancel_event.set()
            self._cv.notify_all()
        self._worker.join(timeout)

    def release(self, timeout: float = 60.0) -> dict:
        """Closes the engine and lets go of its generator (weights, KV caches kept for the CUDA graphs, the graphs and
        their pool, the prompt cache), then returns the freed memory to the GPU driver and the C heap's free pages to
        the system: what a node does when it is
        told to unload its model (lifecycle cleanup) so that a robot's other nodes can use that memory; on a Jetson
        the GPU's memory is the robot's DRAM. Returns the memory before and after, in bytes (`gpu_allocated`,
        `gpu_reserved` on a CUDA device, whatever else still holds memory in the process included; `host_rss_anon`
        where /proc exists). Raises RuntimeError, releasing nothing, if the running generation has not stopped
        within `timeout` s (a cancel takes effect between scales; a hung GPU never gets there)."""
        before = _memory_now(self.generator)
        self.close(timeout)
        if self._worker.is_alive():
            raise RuntimeError(f"the running generation did not stop within {timeout:g} s (a cancel takes effect "
                               "between scales; the GPU may be hung): nothing released")
        gen, self.generator = self.generator, None
        if gen is not None:
            device = getattr(gen, "device", None)
            gen.release_graphs()
            gen.prompt_cache.max_entries = 0
            gen.close_parked()                          # offloaded weights' files: a configure after this makes new ones
            del gen
            free_unused_memory()
            after = _memory_now(None, device)
        else:
            after = dict(before)
        out = {f"{k}_before": v for k, v in before.items()}
        out.update({f"{k}_after": v for k, v in after.items()})
        return out

    # ---------------------------------------------------------------- internals
    def _validate(self, req: Request) -> None:
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise RequestRejected("empty prompt")
        if len(req.prompt) > self.max_prompt_chars:
            raise RequestRejected(f"prompt too long: {len(req.prompt)} characters > max_prompt_chars "
                                  f"{self.max_prompt_chars}")
        if req.cfg is not None and not (0.0 < req.cfg <= 30.0):
            raise RequestRejected(f"cfg {req.cfg} outside (0, 30]")
        if req.top_p is not None and not (0.0 <= req.top_p <= 1.0):
            raise RequestRejected(f"top_p {req.top_p} outside [0, 1]")
        if req.aspect_ratio is not None and not (0.2 <= req.aspect_ratio <= 5.0):
            raise RequestRejected(f"aspect_ratio {req.aspect_ratio} outside [0.2, 5]")
        for name in ("width", "height"):
            v = getattr(req, name)
            if v is not None and not (16 <= v <= 4096):
                raise RequestRejected(f"{name} {v} outside [16, 4096]")
        if (req.width is None) != (req.height is None):
            raise RequestRejected("give both width and height, or neither")
        # resolution must be one the model can make: ask the schedule picker now, not in the worker
        from .infinity.config import schedule_for
        try:
            schedule_for(self.generator.cfg, req.height, req.width, req.aspect_ratio)
        except ValueError as e:
            raise RequestRejected(str(e)) from None

    def _notify(self, req: Request) -> None:
        self._tell(req, "on_state", req)

    def _tell(self, req: Request, event: str, *args) -> None:
        """Calls `event` on the engine's listener and the request's own."""
        for lst in (self.listener, req.listener):
            if lst is not None:
                try:
                    getattr(lst, event)(*args)
                except Exception:   # a broken listener must not stop the worker
                    pass

    def _finish(self, req: Request, state: int, error: str = "") -> None:
        req.state, req.error = state, error
        if req.warmup:
            if state == FAILED and not self.warmup_error:
                self.warmup_error = f"{req.request_id}: {error}"
        elif state == FAILED:
            self.stats.errors += 1
            self.stats.last_error = error
        elif state == CANCELLED:
            self.stats.cancelled += 1
        self._notify(req)
        req.done_event.set()

    def set_idle_release(self, seconds: float) -> None:
        """Changes `idle_release_s` (0: never); a wait already under way follows the new value."""
        with self._cv:
            self.idle_release_s = float(seconds)
            self._cv.notify_all()

    def idle_release_status(self) -> str:
        """What the node reports in diagnostics."""
        if self.idle_release_s <= 0:
            return "off"
        out = f"after {self.idle_release_s:g} s idle; {self.idle_releases} so far"
        last = self.last_idle_release
        if "error" in last:
            return out + f"; the last failed: {last['error']}"
        parts = [f"{k} {last[k + '_before'] / 2 ** 30:.2f} -> {last[k + '_after'] / 2 ** 30:.2f} GiB"
                 for k in ("gpu_reserved", "host_rss_anon") if k + "_before" in last]
        return out + (f"; the last: {', '.join(parts)}" if parts else "")

    def _idle_release_in(self) -> Optional[float]:
        """Seconds until the idle release is due (<= 0: now), or None when none is (off, or nothing ran since the
        last). Called with the lock held."""
        if self.idle_release_s <= 0 or not self._idle_due or self.generator is None or self.gpu_fault:
            return None
        return self._idle_since + self.idle_release_s - time.monotonic()

    def _release_idle(self) -> None:
        """The idle release (`idle_release_s`), in the worker: no generation runs meanwhile."""
        before = _memory_now(self.generator)
        self.generator.release_graphs(keep_warm=True)
        free_unused_memory()
        after = _memory_now(self.generator)
        self.idle_releases += 1
        self.last_idle_release = {**{f"{k}_before": v for k, v in before.items()},
                                  **{f"{k}_after": v for k, v in after.items()}}

    def _preload_text_weights(self) -> None:
        """The offloaded text weights loaded ahead of the next prompt (VAR_GEN_OFFLOAD_PRELOAD), in the worker: no
        generation runs meanwhile. A failure is reported in `preload` and costs nothing but the read: the next
        generation loads what it needs as before."""
        gen = self.generator
        if gen is None or not gen.parked_weights():
            self.preload = "nothing offloaded"
            return
        t = time.perf_counter()
        try:
            done = gen.preload_text_weights()
        except Exception as e:
            gen.end_preload()
            self.preload = f"failed: {type(e).__name__}: {e}"[:500]
            return
        self.preload = (f"loaded {', '.join(gen.preloaded())} in {time.perf_counter() - t:.3f} s" if done else
                        "not done: the kept KV caches' block cannot hold them here (CUDA graphs with kept caches "
                        "on a GPU only)")

    def _run(self) -> None:
        while True:
            with self._cv:
                idle_release = preload = False
                while not self._queue and not self._stop:
                    if self._preload_due:
                        preload, self._preload_due = True, False
                        break
                    wait = self._idle_release_in()
                    if wait is not None and wait <= 0:
                        idle_release, self._idle_due = True, False
                        break
                    self._cv.wait(wait)
                if self._stop:
                    return
                if not (preload or idle_release):
                    req = self._queue.popleft()
                    if self.gpu_fault:           # queued just before the fault: it cannot run either
                        self._finish(req, FAILED, f"not run: {self.gpu_fault}")
                        continue
                    self._current = req
                    self._progress_at = time.monotonic()
            if preload:
                self._preload_text_weights()
                continue
            if idle_release:
                try:
                    self._release_idle()
                except Exception as e:   # never let it stop the worker; the next request makes what it needs
                    self.last_idle_release = {"error": f"{type(e).__name__}: {e}"[:500]}
                continue
            req.state = RUNNING
            self._notify(req)
            t0 = time.monotonic()
            try:
                res = self._generate(req)
            except GenerationCancelled as e:
                req.run_s = time.monotonic() - t0
                self._finish(req, CANCELLED, str(e))
            except Exception as e:   # OOM, bad weights, ...: fail this request, keep serving
                msg = f"{type(e).__name__}: {e}"
                req.run_s = time.monotonic() - t0
                if is_gpu_fault(e):
                    self._on_gpu_fault(req, msg)
                    continue
                if _is_oom(e):
                    msg = f"out of GPU memory: {e}"
                if _is_oom(e) or req.warmup:
                    self.generator.release_graphs()     # their buffers too: start the next request lean
                    _free_cuda_cache()
                if req.warmup:                          # serve without the rest of the warm-up
                    self._drop_warmups(f"not run: {req.request_id} failed")
                self._finish(req, FAILED, msg[:2000])
            else:
                req.run_s = time.monotonic() - t0
                req.result = res
                if req.warmup:
                    self.warmup_s.append(req.run_s)
                    self._finish(req, DONE)
                    continue
                self.stats.completed += 1
                self.stats.last_latency_s = res.timings.get("total_s", 0.0)
                self.stats.last_peak_memory = int(res.memory.get("peak_allocated", 0))
                self.stats.last_kv_cache_bytes = int(res.memory.get("kv_cache_bytes", 0))
                self._finish(req, DONE)
            finally:
                with self._cv:
                    self._current = None
                    self._idle_since, self._idle_due = time.monotonic(), True
                    self._preload_due = _sampler.OFFLOAD_PRELOAD and not self.gpu_fault

    def _drop_warmups(self, why: str) -> None:
        with self._cv:
            dropped = [r for r in self._queue if r.warmup]
            for r in dropped:
                self._queue.remove(r)
        for r in dropped:
            self._finish(r, CANCELLED, why)

    def _generate(self, req: Request) -> GenerationResult:
        def on_scale(ev: ScaleEvent):
            with self._cv:
                self._progress_at = time.monotonic()
            self._tell(req, "on_scale", req, ev)
        if req.cancel_event.is_set():
            raise GenerationCancelled("cancelled before start")
        return self.generator.generate(
            req.prompt, seed=req.seed, cfg=req.cfg, negative_prompt=req.negative_prompt or None,
            height=req.height, width=req.width, h_div_w=req.aspect_ratio, top_k=req.top_k, top_p=req.top_p,
            preview=req.preview, callback=on_scale, should_stop=req.cancel_event.is_set)


    def _on_gpu_fault(self, req: Request, msg: str) -> None:
        self.gpu_fault = ("GPU fault: the process's CUDA context is lost and every later GPU call would fail; "
                          f"restart the process ({msg[:1500]})")
        self._finish(req, FAILED, self.gpu_fault)
        self.clear_queue(f"not run: {self.gpu_fault}")
        self._tell(req, "on_gpu_fault", self.gpu_fault)


# CUDA errors after which the context is unusable (cudaErrorIllegalAddress, LaunchFailure, IllegalInstruction,
# Assert, MisalignedAddress, ECCUncorrectable, HardwareStackError, LaunchTimeout), as torch, Triton and this
# package's CUDA bindings word them
_STICKY_CUDA_ERRORS = ("illegal memory access", "unspecified launch failure", "illegal instruction",
                       "device-side assert", "misaligned address", "uncorrectable ecc", "hardware stack error",
                       "launch timed out")


def is_gpu_fault(e: BaseException) -> bool:
    """Whether e is a sticky CUDA error (the process's CUDA context is lost), not a recoverable one such as an
    out-of-memory."""
    text = str(e).lower()
    return not _is_oom(e) and any(s in text for s in _STICKY_CUDA_ERRORS)


def _memory_now(generator, device=None) -> dict:
    """The allocator's bytes on the generator's CUDA device (or `device`) and the process's anonymous host bytes."""
    from .memory import process_memory
    out = {}
    device = device if device is not None else getattr(generator, "device", None)
    if device is not None and getattr(device, "type", "") == "cuda":
        import torch
        out["gpu_allocated"] = torch.cuda.memory_allocated(device)
        out["gpu_reserved"] = torch.cuda.memory_reserved(device)
    host = process_memory()
    if "rss_anon" in host:
        out["host_rss_anon"] = host["rss_anon"]
    return out


def free_unused_memory() -> None:
    """Collects what nothing holds any more, gives the C heap's free pages back to the system (on the CPU an unloaded
    556 MB model's host memory stayed at 821 MB without it, 259 MB with it) and the allocator's free GPU memory back
    to the driver."""
    from .memory import trim_host_memory
    trim_host_memory()
    _free_cuda_cache()


def _free_cuda_cache() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
