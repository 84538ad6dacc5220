"""The text encoder's outputs for recent prompts, so that a prompt seen again skips the encoder.

Why: a robot asks for the same few things again and again ("the goal object", "the next waypoint"), and
for each one the T5-XL encoder reruns 24 layers whose result depends only on the prompt text. The cache
holds the encoder's features and mask for the last `max_entries` (prompt, negative prompt, CFG) keys,
least recently used first out. An entry costs the features' bytes, T × 2048 float32 per prompt at
Infinity's widths (≈ 0.5 MB for a 30-token prompt with its CFG row). Features are exactly what the
encoder returns, so a hit generates the same image bit for bit as a miss with the same seed. A lock makes
it safe to read (diagnostics) and resize (a parameter change) from other threads than the generator's.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional, Tuple

import torch


class PromptFeatureCache:
    def __init__(self, max_entries: int = 16):
        self._entries: "OrderedDict[tuple, Tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = int(max_entries)
        self.hits = self.misses = 0

    @property
    def max_entries(self) -> int:
        return self._max

    @max_entries.setter
    def max_entries(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"prompt cache size must be >= 0, not {n}")
        with self._lock:
            self._max = int(n)
            self._trim()

    def get(self, key: tuple) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The cached (features, mask) for `key`, now the most recent; None (a miss) when absent or off."""
        with self._lock:
            if self._max == 0:
                return None
            hit = self._entries.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return hit

    def put(self, key: tuple, feats: torch.Tensor, mask: torch.Tensor) -> None:
        with self._lock:
            if self._max == 0:
                return
            self._entries[key] = (feats, mask)
            self._entries.move_to_end(key)
            self._trim()

    def clear(self) -> None:
        """Drop every entry (the text encoder changed: its old outputs no longer hold)."""
        with self._lock:
            self._entries.clear()

    def _trim(self) -> None:            # under the lock
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(f.numel() * f.element_size() + m.numel() * m.element_size() for f, m in self._entries.values())

    def status(self) -> str:
        """What the node reports in diagnostics."""
        if self._max == 0:
            return "off"
        return (f"{len(self)}/{self._max} prompts, {self.nbytes} bytes, {self.hits} hits, "
                f"{self.misses} misses")
