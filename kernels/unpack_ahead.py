"""W4A4 layers' int8 weight workspaces (the i8w path's unpack) made ahead on a side stream, while the layer
before runs: inside `unpack_ahead()`, which the model enters around one scale's block loop.

Why: from 257 rows (1024²'s scales 6-12) each W4A4 layer first unpacks its INT4 weights into an int8 workspace
(N x K bytes) that its GEMM reads with plain loads. On an H100 that is ~0.11 ms a block at 8B widths (3584²: 8 µs,
the FFN's layers 35 µs each), ~3.7 ms a scale and ~26 ms of a 1024² generation, all on the main stream between the
GEMMs. The unpack is bound by memory; the GEMMs it sits between, by the tensor cores. Run side by side they can
overlap.

How: the order of the layers is learned. Each workspace made records the layer whose workspace was made before it
(`_NEXT`, kept across scales and generations: the block loop calls the same layers in the same order every scale).
When layer A makes its workspace, the workspace of the layer that came after A last time is allocated on the
current stream and unpacked on a side stream that first waits for the current one; an event marks it done. That
layer's call then waits for the event on its own stream and takes the workspace. Workspaces made ahead that the
scale never takes are waited for and freed on exit, so under CUDA graph capture every fork is joined before the
capture ends. Costs one more workspace alive at a time (up to 51 MB at 8B widths: the FFN's).

The unpack itself is the caller's: `unpack(layer)` (called on the current stream: whatever it derives from the layer
is made there) returns a launch `(out) -> None`, which runs on the side stream. This module only orders it.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Callable, Optional

import torch

_STATE = threading.local()   # .ahead: the innermost unpack_ahead()'s _Ahead, or None
# id(layer) -> (weakref to the layer, weakref to the layer whose workspace came next last time)
_NEXT: dict = {}
_SIDE: dict = {}             # device index -> the side stream
_PRUNE_AT = 4096             # _NEXT's size at which dead layers' entries are dropped (an 8B model has 240 W4A4 layers)


class _Ahead:
    def __init__(self, unpack: Callable, version: Callable):
        self.unpack, self.version = unpack, version    # layer -> launch(out); layer -> weights version
        self.pending = {}                              # id(layer) -> (layer, version, workspace, event)
        self.last = None                               # weakref to the layer whose workspace was made last
        self.forks = self.hits = 0

    def take(self, layer) -> Optional[torch.Tensor]:
        """The layer's workspace made ahead, its unpack waited for on the current stream; None if there is none or
        the weights changed since (then it is still waited for, and dropped)."""
        p = self.pending.pop(id(layer), None)
        if p is None:
            return None
        torch.cuda.current_stream(p[2].device).wait_event(p[3])
        if p[0] is not layer or p[1] != self.version(layer):
            return None
        self.hits += 1
        return p[2]

    def made(self, layer, at_hand: Callable) -> None:
        """`layer` has its workspace: learn the order, then unpack ahead the layer that followed it last time,
        unless `at_hand(that layer)` (its workspace kept already) or it is pending."""
        nxt = self.learn(layer)
        if nxt is None or id(nxt) in self.pending or at_hand(nxt):
            return
        self._fork(nxt)

    def learn(self, layer):
        """Records that `layer`'s workspace came after the last one made here; returns the layer whose workspace
        came after `layer`'s last time (in this or an earlier context), or None."""
        last = self.last() if self.last is not None else None
        if last is not None and last is not layer:
            if len(_NEXT) >= _PRUNE_AT:      # models loaded again and again: drop the entries of layers that died
                for k in [k for k, (a, b) in _NEXT.items() if a() is None or b() is None]:
                    del _NEXT[k]
            _NEXT[id(last)] = (weakref.ref(last), weakref.ref(layer))
        self.last = weakref.ref(layer)
        entry = _NEXT.get(id(layer))
        nxt = entry[1]() if entry is not None and entry[0]() is layer else None
        return None if nxt is layer else nxt

    def _fork(self, layer) -> None:
        dev = layer.qweight.device
        main = torch.cuda.current_stream(dev)
        side = _SIDE.get(dev.index)
        if side is None:
            side = _SIDE[dev.index] = torch.cuda.Stream(dev)
        # allocated on the current stream: the block may have been freed by its work still queued there, which the
        # side stream waits for; every later use of it on the current stream comes after the event's wait
        out = torch.empty(layer.out_features, layer.in_features, dtype=torch.int8, device=dev)
        launch = self.unpack(layer)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            launch(out)
        done = torch.cuda.Event()
        done.record(side)
        self.pending[id(layer)] = (layer, self.version(layer), out, done)
        self.forks += 1

    def close(self) -> None:
        if self.pending:
            main = torch.cuda.current_stream()
            for p in self.pending.values():
                main.wait_event(p[3])
            self.pending.clear()


@contextlib.contextmanager
def unpack_ahead(unpack: Callable, version: Callable):
    """Inside, `take` / `made` make the workspaces ahead (see the module's doc). Nests: an inner one is the outer's
    (one order, one set of pending workspaces); per thread. Yields the _Ahead (its forks and hits: tests read them)."""
    outer = getattr(_STATE, "ahead", None)
    if outer is not None:
        yield outer
        return
    ahead = _STATE.ahead = _Ahead(unpack, version)
    try:
        yield ahead
    finally:
        _STATE.ahead = None
        ahead.close()


def current() -> Optional[_Ahead]:
    """The innermost unpack_ahead()'s state on this thread, or None."""
    return getattr(_STATE, "ahead", None)
