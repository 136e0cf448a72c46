"""Lazy load: block offload whose blocks are read from the checkpoint's files as they are needed.

With `OffloadConfig(granularity="block" | "phase", lazy_load=True)` the blocks are not copied into
host buffers (lightx2v.runtime.block_offload): every block tensor stays what the loader made it, a
view of the memory-mapped safetensors file (lightx2v.loading.state_dict: mmap + assign), whose pages
the OS reads on first touch and may drop again (page cache, not the process's memory). A
`DiskReader` gathers each unit's tensors from there into one of a small ring of pinned host buffers
(`num_disk_workers` threads, `num_disk_workers + 1` buffers of the largest unit), ahead of use, and
the slot pool copies from that buffer to the device as usual. Host memory then holds the ring, not
the model: once a unit is read, its pages are unmapped from the process again (`drop_pages`,
madvise MADV_DONTNEED: they stay in the page cache, reclaimable, and are read again when next
needed), so the process's resident memory does not grow to the model's size as the blocks are read.

This only saves memory where the loader did not convert the blocks: a DiT stored in the run's dtype
(a bf16 file for bf16), or pre-quantized for a quantized run. A cast, a quantization or a LoRA merge
while loading makes the tensors ordinary host memory; `file_backed` says how many are not mapped from
a file, and the engine warns (the run is still correct, only not lazy).

Order and reuse: reads are started for the units after the ones the slots prefetch, in run order,
while buffers are free; a unit asked for is waited for (or read now); a buffer goes back to the ring
once its copy to the device is queued, and a worker writing into it again first waits for that copy
(a CUDA event). A read started before an in-place write to the unit's tensors (a dynamic LoRA's
patch, seen by their version counters) is read again.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import os
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor


class DiskReader:
    """Reads units (lightx2v.runtime.block_offload._Unit) into a ring of host buffers on worker threads."""

    def __init__(self, nbytes: int, workers: int, pin: bool, cuda: bool) -> None:
        count = workers + 1
        self.workers = workers
        self.buffers = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin) for _ in range(count)]
        self.events = [torch.cuda.Event() if cuda else None for _ in range(count)]
        self.idle = list(range(count))
        self.pending: OrderedDict = OrderedDict()  # unit key -> (buffer index, future, stamp)
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="lightx2v-lazy-load")
        self.reads = 0  # units read (tests, stats)
        self.droppable: dict = {}  # unit key -> indexes of its source tensors that lie in a file mapping

    @property
    def nbytes(self) -> int:
        return self.buffers[0].numel()

    def ahead(self, units: Sequence) -> None:
        """Start reading `units` (in order) into idle buffers; stops when none is idle."""
        for unit in units:
            if unit.key not in self.pending:
                if not self.idle:
                    return
                self._start(unit, self.idle.pop(0))

    def get(self, unit) -> tuple[Tensor, Callable]:
        """(the unit's flat bytes in a host buffer, done(stream)): waits for its read (started now if it
        was not). `done(stream)` gives the buffer back once what `stream` has queued (the copy) ran."""
        entry = self.pending.pop(unit.key, None)
        if entry is not None and entry[2] != unit.stamp():  # written in place since the read began
            entry[1].result()
            self.idle.append(entry[0])
            entry = None
        if entry is None:
            if not self.idle:
                self._reclaim()
            self._start(unit, self.idle.pop(0))
            entry = self.pending.pop(unit.key)
        index, future, _ = entry
        future.result()  # a read that raised raises here

        def done(stream) -> None:
            if self.events[index] is not None:
                self.events[index].record(stream)
            self.idle.append(index)

        return self.buffers[index][:unit.layout.nbytes], done

    def _start(self, unit, index: int) -> None:
        future: Future = self.executor.submit(self._read, unit, index)
        self.pending[unit.key] = (index, future, unit.stamp())
        self.reads += 1

    def _reclaim(self) -> None:
        """No buffer is idle: the oldest read ahead gives its buffer back (read again when needed)."""
        _, (index, future, _) = self.pending.popitem(last=False)
        future.result()
        self.idle.append(index)

    @torch.no_grad()
    def _read(self, unit, index: int) -> None:
        # on a worker thread: wait until the last copy out of this buffer ran, then gather the unit's
        # tensors (its sources: the mapped file's pages, read by the OS now) into it
        if self.events[index] is not None:
            self.events[index].synchronize()
        for view, src in zip(unit.layout.views(self.buffers[index]), unit.host_views):
            view.copy_(src)
        # unmap the pages of the tensors that are the file's (mapped, never written in place); a unit
        # may mix them with tensors the loader made (the params a bf16 run keeps in float32)
        key = unit.key
        if key not in self.droppable:
            self.droppable[key] = [i for i, mapped in enumerate(file_backed_mask(unit.host_views) or ()) if mapped]
        stamp = unit.stamp()
        drop_pages([unit.host_views[i] for i in self.droppable[key] if not stamp[i]])

    def close(self) -> None:
        self.executor.shutdown(wait=True)


_MADV_DONTNEED = 4


@functools.lru_cache(maxsize=None)
def _libc():
    """(the C library, the page size), loaded once (drop_pages runs after every unit read); (None, 0)
    where there is none to call."""
    try:
        return ctypes.CDLL(None, use_errno=True), os.sysconf("SC_PAGE_SIZE")
    except (OSError, AttributeError, ValueError):
        return None, 0


def drop_pages(tensors: Sequence[Tensor]) -> int:
    """Unmap the whole pages of file-mapped `tensors` from this process (madvise MADV_DONTNEED): the
    data stays in the file (and the page cache) and is read again on the next touch, but no longer
    counts in the process's resident memory. Only for tensors mapped from a file and never written
    (on anonymous memory this would zero them: the caller checks `file_backed`). Returns the bytes
    released (0 where madvise is not available)."""
    libc, page = _libc()
    if libc is None:
        return 0
    done = 0
    for t in tensors:
        lo = t.data_ptr()
        hi = lo + t.numel() * t.element_size()
        start, end = -(-lo // page) * page, hi // page * page  # whole pages inside the tensor only
        if end > start and libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) == 0:
            done += end - start
    return done


def file_backed(tensors: Sequence[Tensor], maps: str = "/proc/self/maps") -> Optional[int]:
    """How many of `tensors` lie in memory mapped from a file (None: unknown, no /proc/self/maps)."""
    mask = file_backed_mask(tensors, maps)
    return None if mask is None else sum(mask)


def file_backed_mask(tensors: Sequence[Tensor], maps: str = "/proc/self/maps") -> Optional[list[bool]]:
    """For each of `tensors`: does it lie in memory mapped from a file (None: unknown)."""
    try:
        with open(maps) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    spans = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            spans.append((lo, hi))
    spans.sort()
    starts = [lo for lo, _ in spans]
    out = []
    for t in tensors:
        p = t.data_ptr()
        i = bisect.bisect_right(starts, p) - 1
        out.append(i >= 0 and p < spans[i][1])  # (a mapping may be split in several entries: its start decides)
    return out
