"""The device buffers of block / phase offload (lightx2v.runtime.block_offload): `SlotPool`, `count`
byte buffers of the largest unit's size on the device, allocated once and shared by every offloaded
DiT; a unit is copied into a free slot with one copy on a side CUDA stream (events order the copy
against the compute that last read the slot, and the compute against the copy). `free_buffers` /
`alloc_buffers` give the memory back and take it again (BlockOffloads.park)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:  # (block_offload imports this module)
    from lightx2v.runtime.block_offload import UnitLayout



class _Slot:
    def __init__(self, data: Tensor, cuda: bool) -> None:
        self.data = data          # uint8 [nbytes] on the device, allocated once
        self.key = None           # the unit it holds (or is being filled with)
        self.stamp = None         # the unit's tensors' version counters when it was filled
        self.busy = False         # pointed at by a unit that has not been released
        self.filled = 0           # when it was last filled (the pool's copy count)
        self.views: dict[tuple, list[Tensor]] = {}  # layout signature -> typed views
        self.ready = torch.cuda.Event() if cuda else None  # its copy is done (side stream)
        self.free = torch.cuda.Event() if cuda else None   # the compute that used it is done

    def views_for(self, layout: UnitLayout) -> list[Tensor]:
        if layout.signature not in self.views:
            self.views[layout.signature] = layout.views(self.data)
        return self.views[layout.signature]


class SlotPool:
    """`count` device buffers of `nbytes`, reused for every unit of the DiTs that share them."""

    def __init__(self, device: torch.device, nbytes: int, count: int) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._nbytes = nbytes
        self.slots = [_Slot(torch.empty(nbytes, dtype=torch.uint8, device=device), self.cuda) for _ in range(count)]
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.copies = 0  # units copied into a slot so far (tests, stats)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def free_buffers(self) -> None:
        """Give the slots' device memory back (BlockOffloads.park); nothing is held in them then."""
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)  # no copy still writing into them
        for slot in self.slots:
            slot.data = torch.empty(0, dtype=torch.uint8, device=self.device)
            slot.views.clear()
            slot.key = slot.stamp = None

    def alloc_buffers(self) -> None:
        for slot in self.slots:
            if slot.data.numel() != self._nbytes:
                slot.data = torch.empty(self._nbytes, dtype=torch.uint8, device=self.device)

    def find(self, key, stamp=None) -> Optional[_Slot]:
        """The slot holding unit `key` as it is now: a copy made before an in-place change of the
        unit's tensors (`stamp` differs: a dynamic LoRA patched a modulation table) is dropped."""
        slot = next((s for s in self.slots if s.key == key), None)
        if slot is not None and stamp is not None and slot.stamp != stamp and not slot.busy:
            slot.key = slot.stamp = None
            return None
        return slot

    def take(self, key, src, keep: Sequence = (), stamp=None) -> _Slot:
        """The slot holding unit `key` (copied from `src` now unless it is there or on its way), once
        its copy is done as seen from the compute stream; busy until `release`. `src`: the unit's
        flat host bytes, or a function giving (them, done(stream)) (lightx2v.runtime.lazy_load)."""
        slot = self.find(key, stamp)
        if slot is not None and slot.busy:
            raise RuntimeError(f"offload unit {key} is already in use")
        if slot is None:
            slot = self._fill(self._victim(keep, required=True), key, src, stamp)
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(slot.ready)
        slot.busy = True
        return slot

    def prefetch(self, key, src, keep: Sequence = (), stamp=None) -> None:
        """Start copying unit `key` into a free slot not holding a unit of `keep` (nothing if none)."""
        if self.find(key, stamp) is None:
            slot = self._victim(keep, required=False)
            if slot is not None:
                self._fill(slot, key, src, stamp)

    def release(self, slot: _Slot) -> None:
        """The unit in `slot` is done: what the compute stream queued so far is the slot's last use."""
        if self.cuda:
            slot.free.record(torch.cuda.current_stream(self.device))
        slot.busy = False

    def _victim(self, keep: Sequence, required: bool) -> Optional[_Slot]:
        idle = [s for s in self.slots if not s.busy]
        spare = [s for s in idle if s.key not in keep] or (idle if required else [])
        if not spare:
            if required:
                raise RuntimeError(f"all {len(self.slots)} offload buffers are in use; use more (offload_buffers)")
            return None
        return min(spare, key=lambda s: s.filled)  # the least recently filled

    def _fill(self, slot: _Slot, key, src, stamp=None) -> _Slot:
        # src: the unit's flat host bytes (uint8 [n]); ONE copy into the slot's first n bytes
        src, done = src() if callable(src) else (src, None)
        dst = slot.data[:src.numel()]
        if self.cuda:
            with torch.cuda.stream(self.stream):
                self.stream.wait_event(slot.free)  # the compute that last read this slot is done
                dst.copy_(src, non_blocking=True)
                slot.ready.record(self.stream)
        else:
            dst.copy_(src)
        if done is not None:
            done(self.stream)  # the host bytes may be reused once what is queued there ran
        self.copies += 1
        slot.key, slot.stamp, slot.filled = key, stamp, self.copies
        return slot
