"""Cross-attention K/V computed once per generation: the engine's `context_kv` step.

A DiT's cross-attention K and V are projections of the text (and image) context: they do not
depend on the latents or the timestep, yet a plain forward recomputes them at every step, for every
block (Wan 14B: 40 blocks x 2 projections of 512 tokens, and of 257 image tokens for I2V). With
`EngineConfig.context_kv` (on by default) each DiT gets a `ContextKVCache` as its `context_cache`;
`WanModel.cross_kv` asks it for the K/V of the context tensors it was called with, and the first
step of a generation fills it.

The cache is named state (DESIGN principle 8): the pipeline resets it at the start and at the end
of every generation (so a LoRA switched between generations, or a new prompt, never sees stale
K/V), and within one generation it is keyed by the identity of the context tensors (the same
tensor objects are passed at every step: the conditioning is built once; batched CFG joins the two
branches once per generation, lightx2v.pipelines.base.Guidance) and their in-place version
counter. Memory: per CFG branch, blocks x 2 x Lc x dim in the compute dtype (Wan 14B, text only:
40 x 2 x 512 x 5120 x 2 bytes = 0.42 GB).

The K/V of each block are made when the block stack reaches that block (`get_lazy` keeps a
`LazyList`: one maker per block, each item made on first access, then kept), not all before the
first block: with block offload (lightx2v.runtime.block_offload) a block's weights are on the
device only around its own turn. The numbers are the same either way.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable, Optional, Sequence

from torch import Tensor

_Key = tuple


def _key(tensors: Sequence[Optional[Tensor]]) -> _Key:
    return tuple(None if t is None else (id(t), t._version) for t in tensors)


class ContextKVCache:
    """K/V per context (a few per generation: cond, uncond, their batch of 2), reset per generation."""

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._entries: list[tuple[_Key, tuple, object]] = []  # (key, weakrefs, value)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, tensors: Sequence[Optional[Tensor]], compute: Callable[[], object]):
        """The value stored for exactly these tensor objects (unchanged since), else `compute()`, stored."""
        key = _key(tensors)
        with self._lock:
            for k, refs, value in self._entries:
                # id() of a freed tensor can be reused: the weak references say it is the same object
                if k == key and all((r is None) == (t is None) and (r is None or r() is t) for r, t in zip(refs, tensors)):
                    self.hits += 1
                    return value
        value = compute()
        with self._lock:
            self.misses += 1
            if len(self._entries) >= self.max_entries:
                self._entries.pop(0)
            self._entries.append((key, tuple(None if t is None else weakref.ref(t) for t in tensors), value))
        return value

    def get_lazy(self, tensors: Sequence[Optional[Tensor]], makers: Callable[[], Sequence[Callable[[], object]]]) -> "LazyList":
        """As `get`, for a value of several items made one at a time: `makers()` (called once per
        context) returns one function per item; the stored `LazyList` calls each on first access."""
        return self.get(tensors, lambda: LazyList(makers()))

    def reset(self) -> None:
        """Forget every stored K/V (frees them): the start and the end of a generation."""
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


class LazyList:
    """A read-only sequence whose item i is `makers[i]()`, made on first access and kept. A maker that
    raises leaves its item unmade (the next access tries again)."""

    _UNMADE = object()

    def __init__(self, makers: Sequence[Callable[[], object]]) -> None:
        self._makers = list(makers)
        self._items = [self._UNMADE] * len(self._makers)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._makers)

    def __getitem__(self, i: int):
        item = self._items[i]
        if item is self._UNMADE:
            with self._lock:  # two threads never make the same item twice
                item = self._items[i]
                if item is self._UNMADE:
                    item = self._items[i] = self._makers[i]()
        return item

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def made(self) -> int:
        """How many items are made so far."""
        return sum(item is not self._UNMADE for item in self._items)


def apply_context_kv(models: Sequence) -> list[str]:
    """Give each model that computes cross-attention K/V (a `context_cache` attribute) a cache; returns their names."""
    done = []
    for name, model in models:
        if hasattr(model, "context_cache"):
            model.context_cache = ContextKVCache()
            done.append(name)
    return done


def reset_context_kv(models: Sequence) -> None:
    """Reset the caches of `models` (the pipeline: at the start and the end of each generation)."""
    for model in models:
        cache = getattr(model, "context_cache", None)
        if cache is not None:
            cache.reset()
