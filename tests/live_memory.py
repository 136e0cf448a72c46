"""A live-memory tracker for activation tests on the CPU: peak bytes of the tensor storages made while
it is on (a TorchDispatchMode), as a GPU's max_memory_allocated would count them minus the weights."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LiveMemory(TorchDispatchMode):
    """Peak bytes of storages alive that were made inside the mode. A view of a weight or of an input
    (`exclude`: modules, whose parameters and buffers are taken, or tensors) is not a new storage and is
    not counted (a Linear's transposed weight is such a view)."""

    def __init__(self, *exclude):
        super().__init__()
        self.live, self.peak, self.seen = 0, 0, set()
        self.skip = set()
        for obj in exclude:
            tensors = list(obj.parameters()) + list(obj.buffers()) if isinstance(obj, torch.nn.Module) else [obj]
            self.skip |= {t.untyped_storage().data_ptr() for t in tensors}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self.seen and key not in self.skip:
                    self.seen.add(key)
                    self.live += st.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(st, self._free, key, st.nbytes())
        return out

    def _free(self, key, n):
        self.seen.discard(key)
        self.live -= n
