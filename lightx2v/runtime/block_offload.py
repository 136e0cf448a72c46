"""Block and phase offload: a DiT's blocks in (pinned) host memory, run through a few device buffers.

`apply_block_offload(pipeline, device, OffloadConfig("block" | "phase"))` is the engine's placement
step for the DiTs (lightx2v.runtime.engine). What it does to each DiT:

- Host copies. Every tensor of every block (parameters and buffers; int8 / float8 weights and their
  scales as they are) is copied into one flat byte buffer per block in host memory (pinned on CUDA,
  so copies are asynchronous), and the tensor is pointed at its place there (`t.data = view`): the
  Parameter objects stay the same, `state_dict()` reads the host copies. Everything outside the
  blocks (embeddings, time projection, head) goes to the device and stays there.
- Units. A unit is what is brought to the device at once: a block ("block"), or one phase of a block
  ("phase"): the block class declares its phases in forward order (`_offload_phases`, e.g. Wan's
  self-attention with norm1 and the modulation table, cross-attention with norm3, FFN with norm2);
  the runtime never guesses them. Every block has the same structure (checked), so a unit's layout
  (each tensor's offset, shape, dtype in its flat buffer) is the same for every block.
- Slots. `num_buffers` device byte buffers of the largest unit's size (`SlotPool`, runtime/slot_pool.py), allocated once
  and shared by every DiT of the pipeline (Wan2.2 A14B's two experts use the same ones). A unit is
  copied into a slot with ONE copy (host flat slice -> slot), on a side CUDA stream; before it runs,
  the compute stream waits for that copy (an event) and its tensors are pointed at their views in the
  slot; after it ran they are pointed back at the host copies and an event is recorded on the compute
  stream: the next copy into that slot waits for it, so a slot is never overwritten while used. While
  a unit computes, the next `num_buffers - 1` units (in block order, wrapping to block 0 for the next
  call) are copied into the free slots: the copies overlap the compute. Nothing is allocated per step.
  A slot keeps its unit between calls (2 blocks in 2 slots are copied once); it is copied again when
  a tensor of the unit was written in place since (its version counter moved: a dynamic LoRA's
  patched modulation table), so the host copies stay the truth.
- Where the bookkeeping runs. Block: in `run_blocks`' loop, through the model's hook point
  (`WanModel.block_hooks`: before_block(i) / after_block(i)), outside the block. A compiled block
  (`nn.Module.compile`, which traces the block's own module hooks into its graph) therefore sees the
  same Parameter objects with other storage: no graph break, no recompile. Phase: the first phase
  before the block (as block), a later one from a forward pre-hook on each module of that phase (the
  first call brings it; it releases the block's earlier phases once the block's forward reached it).
  Those hooks run inside the block's forward, so phase offload is refused with compile (checked when
  the EngineConfig is made).
- Cross-attention K/V. `WanModel.cross_kv` makes each block's K/V when `run_blocks` reaches the block
  (after before_block: with block offload its weights are on the device; with phase offload its
  cross-attention modules' hooks bring that phase), cached for the generation or not.
- Two experts: their blocks are offloaded the same way through the shared slots; what is outside their
  blocks (~0.85 GB each at 14B: the fp32 time projection is most of it) stays on the device for both.
  `prefetch(name)` (the pipeline's expert-switch hint) is a no-op: the first block of the next
  expert is copied when it is needed (one block's copy, once per switch).

On the CPU the host and the device are the same memory: the same bookkeeping runs with synchronous
copies (that is how the tests check it); the overlap is measured on a GPU (benchmarks/offload.py).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from lightx2v.errors import InputError
from lightx2v.runtime.slot_pool import SlotPool, _Slot

ALIGN = 256  # bytes: every tensor starts aligned in a flat buffer (vectorized loads, fp8 GEMMs)


def _tensors(module: nn.Module) -> list[tuple[str, Tensor]]:
    """The module's parameters and (non-None) buffers, by name, in definition order."""
    return list(module.named_parameters()) + [(k, b) for k, b in module.named_buffers() if b is not None]


class UnitLayout:
    """Where each tensor of a unit lies in a flat byte buffer: (name, shape, dtype, offset), aligned."""

    def __init__(self, named: Sequence[tuple[str, Tensor]]) -> None:
        self.entries = []
        offset = 0
        for name, t in named:
            nbytes = t.numel() * t.element_size()
            self.entries.append((name, tuple(t.shape), t.dtype, offset))
            offset += -(-nbytes // ALIGN) * ALIGN
        self.nbytes = offset
        self.signature = tuple(e[:3] for e in self.entries)

    def views(self, flat: Tensor) -> list[Tensor]:
        """Typed views of `flat` (uint8, at least `nbytes`) for each tensor of the unit, in order."""
        out = []
        for _, shape, dtype, offset in self.entries:
            n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            out.append(flat[offset:offset + n].view(dtype).view(shape))
        return out


def block_units(block: nn.Module, granularity: str) -> list[tuple[str, list[tuple[str, Tensor]]]]:
    """The units of one block: [("block", tensors)] or one (phase, tensors) per declared phase."""
    named = _tensors(block)
    if granularity == "block":
        return [("block", named)]
    phases = getattr(type(block), "_offload_phases", None)
    if not phases:
        raise InputError(f"{type(block).__name__} declares no phases (_offload_phases); use offload='block'")
    units: list[tuple[str, list]] = [(phase, []) for phase, _ in phases]
    for name, t in named:
        owner = [i for i, (_, members) in enumerate(phases)
                 if any(name == m or name.startswith(m + ".") for m in members)]
        if len(owner) != 1:
            raise InputError(f"{type(block).__name__}.{name} is in {len(owner)} of the declared offload phases "
                             f"(_offload_phases); each tensor must be in exactly one")
        units[owner[0]][1].append((name, t))
    return units


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """Every block of the model's declared repeated blocks (`_repeated_blocks`), in order."""
    names = getattr(model, "_repeated_blocks", None)
    if not names:
        raise InputError(f"{type(model).__name__} declares no repeated blocks (_repeated_blocks); "
                         f"it cannot be offloaded by block")
    return [block for attr in names for block in model.get_submodule(attr)]


def offload_split(model: nn.Module, granularity: str, sizes: dict[str, int]) -> tuple[int, int, int]:
    """(bytes outside the blocks, bytes of the largest unit, number of blocks) from `sizes` (tensor name
    -> bytes, as the model will be loaded): the memory estimate's view of block / phase offload."""
    prefixes = [f"{attr}." for attr in model._repeated_blocks]
    inside = sum(v for k, v in sizes.items() if any(k.startswith(p) for p in prefixes))
    blocks = repeated_blocks(model)
    first = f"{model._repeated_blocks[0]}.0."
    unit = max(sum(-(-sizes[first + name] // ALIGN) * ALIGN for name, _ in named)
               for _, named in block_units(blocks[0], granularity))
    return sum(sizes.values()) - inside, unit, len(blocks)


# ---------------------------------------------------------------- one DiT


class _Unit:
    """One block, or one phase of a block: its tensors, its layout, its flat host bytes."""

    def __init__(self, key: tuple, layout: UnitLayout, tensors: list[Tensor], host: Optional[Tensor]) -> None:
        self.key, self.layout, self.tensors, self.host = key, layout, tensors, host
        # where the tensors point between uses: their places in `host`, or (lazy load: no host
        # buffer) what the loader made them, views of the mapped checkpoint file
        self.host_views = layout.views(host) if host is not None else [t.data for t in tensors]
        self.pos = 0  # its place in the DiT's run order

    def point(self, views: list[Tensor]) -> None:
        for t, v in zip(self.tensors, views):
            t.data = v

    def stamp(self) -> tuple[int, ...]:
        """The tensors' version counters (kept by `t.data = ...`, moved by in-place writes)."""
        return tuple(t._version for t in self.tensors)


def plan_units(model: nn.Module, granularity: str) -> list[list[tuple[str, UnitLayout, list[tuple[str, Tensor]]]]]:
    """Per block, its units: (unit name, layout, named tensors); every block's layouts the same."""
    plans = []
    for i, block in enumerate(repeated_blocks(model)):
        units = [(name, UnitLayout(named), named) for name, named in block_units(block, granularity)]
        if plans and [u[1].signature for u in units] != [u[1].signature for u in plans[0]]:
            raise InputError(f"block {i} of {type(model).__name__} differs from block 0 (its tensors' names, shapes "
                             f"or dtypes); block offload needs identical blocks")
        plans.append(units)
    return plans


class BlockOffload:
    """One DiT's blocks in host memory, run through a shared `SlotPool` (see the module docstring)."""

    def __init__(self, model: nn.Module, pool: SlotPool, granularity: str, tag: int = 0,
                 prefetch: bool = True, pin: bool = False, reader=None) -> None:
        self.model, self.pool, self.granularity = model, pool, granularity
        self.use_prefetch = prefetch
        self.pinned = pin
        self.reader = reader  # lazy load (lightx2v.runtime.lazy_load.DiskReader): no host copies
        self.blocks = repeated_blocks(model)
        self.units: list[list[_Unit]] = []
        self.host: list[Tensor] = []  # one flat host buffer per block
        for i, units in enumerate(plan_units(model, granularity)):
            if reader is not None:
                self.units.append([_Unit((tag, i, p), layout, [t for _, t in named], None)
                                   for p, (_, layout, named) in enumerate(units)])
                continue
            flat = torch.empty(sum(layout.nbytes for _, layout, _ in units), dtype=torch.uint8, pin_memory=pin)
            row, start = [], 0
            for p, (_, layout, named) in enumerate(units):
                unit = _Unit((tag, i, p), layout, [t for _, t in named], flat[start:start + layout.nbytes])
                start += layout.nbytes
                with torch.no_grad():
                    for t, v in zip(unit.tensors, unit.host_views):
                        v.copy_(t.detach())
                unit.point(unit.host_views)  # the loaded copy is dropped (or was the mmap'd file)
                row.append(unit)
            self.units.append(row)
            self.host.append(flat)
        self.order = [u for row in self.units for u in row]  # the order units run in
        for pos, unit in enumerate(self.order):
            unit.pos = pos
        self._held: dict[tuple, tuple[_Unit, _Slot]] = {}
        self._cursor: Optional[int] = None  # phase: the phase the running block's forward has reached
        self._handles = []
        if granularity == "phase":
            self._hook_phases()
        model.block_hooks = self

    # -- what run_blocks calls ------------------------------------------------------------------
    def before_block(self, i: int) -> None:
        """Block i's first unit (the whole block, or its first phase) on the device."""
        self._cursor = None
        self._ensure(self.units[i][0])

    def after_block(self, i: int) -> None:
        """Block i has run: every unit of it back to its host copy, its slots free after this compute."""
        for unit in self.units[i]:
            self._release(unit)
        self._cursor = None

    # -- phases ---------------------------------------------------------------------------------
    def _hook_phases(self) -> None:
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(lambda m, a, i=i: self._enter_phase(i, 0)))
            for p, (_, members) in enumerate(type(block)._offload_phases):
                if p == 0:
                    continue
                for member in members:
                    for module in block.get_submodule(member).modules():
                        self._handles.append(module.register_forward_pre_hook(
                            lambda m, a, i=i, p=p: self._enter_phase(i, p)))

    def _enter_phase(self, i: int, p: int) -> None:
        """A module of phase p of block i is about to run. Inside the block's forward (the block's own
        pre-hook set the cursor) the earlier phases are done: released. Before it (the cross-attention
        K/V made in run_blocks) nothing is released."""
        if p == 0:
            self._cursor = 0
        elif self._cursor is not None and p > self._cursor:
            for unit in self.units[i][self._cursor:p]:
                self._release(unit)
            self._cursor = p
        self._ensure(self.units[i][p])

    # -- units ----------------------------------------------------------------------------------
    def _ensure(self, unit: _Unit) -> None:
        if unit.key in self._held:
            return
        ahead = self._ahead(unit)
        keep = [u.key for u in ahead]
        slot = self.pool.take(unit.key, self._source(unit), keep=keep, stamp=unit.stamp())
        unit.point(slot.views_for(unit.layout))
        self._held[unit.key] = (unit, slot)
        for nxt in ahead:
            self.pool.prefetch(nxt.key, self._source(nxt), keep=keep, stamp=nxt.stamp())
        if self.reader is not None:  # read further ahead from the files, into the reader's buffers
            n = len(self.order)
            later = (self.order[(unit.pos + j) % n] for j in range(1, len(self.pool.slots) + len(self.reader.buffers)))
            self.reader.ahead([u for u in later if u is not unit and self.pool.find(u.key, u.stamp()) is None])

    def _source(self, unit: _Unit):
        """Where a unit's bytes are copied from: its flat host buffer, or (lazy load) the reader's."""
        return unit.host if self.reader is None else (lambda: self.reader.get(unit))

    def _ahead(self, unit: _Unit) -> list[_Unit]:
        """The units that run next (wrapping to the first block: the next call), as many as can be in
        the other slots; none without prefetch."""
        if not self.use_prefetch:
            return []
        n = len(self.order)
        ahead = [self.order[(unit.pos + j) % n] for j in range(1, len(self.pool.slots))]
        return [u for u in dict.fromkeys(ahead) if u is not unit and u.key not in self._held]

    def _release(self, unit: _Unit) -> None:
        held = self._held.pop(unit.key, None)
        if held is not None:
            unit.point(unit.host_views)
            self.pool.release(held[1])

    # -- inspection -----------------------------------------------------------------------------
    def host_bytes(self) -> int:
        return sum(flat.numel() for flat in self.host)

    def remove(self) -> None:
        """Detach: hooks removed, `block_hooks` cleared; the blocks stay in host memory."""
        for unit in list(u for u, _ in self._held.values()):
            self._release(unit)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.model.block_hooks = None


class BlockOffloads:
    """The pipeline's offloaded DiTs (`pipeline.offload`): name -> BlockOffload, and their shared slots.

    `park()` takes everything of the DiTs off the device: the slots' buffers are freed and what lives
    outside the blocks (embeddings, time projection, head: ~0.8 GB at 14B) goes to host copies. The
    pipeline parks them while an offloaded encoder or the VAE has the device (runtime.offload.placed:
    a small GPU then holds the VAE decode's working set, not the DiT's remains beside it); the DiTs'
    first forward after that brings them back (a forward pre-hook: `unpark`)."""

    def __init__(self, offloads: dict[str, BlockOffload], pool: SlotPool, granularity: str) -> None:
        self.offloads, self.pool, self.granularity = offloads, pool, granularity
        self.models = {name: off.model for name, off in offloads.items()}
        self.parked = False
        self.parks = 0  # times parked (tests, stats)
        self._rest: list[Tensor] = []  # the tensors outside the blocks (kept on the device unless parked)
        self._host_rest: dict[int, Tensor] = {}  # id(tensor) -> its host copy while parked (made once)
        for off in offloads.values():
            inside = {id(t) for row in off.units for u in row for t in u.tensors}
            self._rest += [t for _, t in _tensors(off.model) if id(t) not in inside]
            off.model.register_forward_pre_hook(lambda m, args: self.unpark())

    def park(self) -> None:
        """Free the device of the DiTs (between their stages; no unit may be held)."""
        if self.parked:
            return
        if any(off._held for off in self.offloads.values()):
            raise RuntimeError("cannot park the offloaded DiTs while a block is on the device")
        with torch.no_grad():
            for t in self._rest:
                if t.device.type != "cpu":
                    host = self._host_rest.get(id(t))
                    if host is None:
                        host = self._host_rest[id(t)] = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pool.cuda)
                    host.copy_(t.data)
                    t.data = host
        self.pool.free_buffers()
        self.parked = True
        self.parks += 1

    def unpark(self) -> None:
        """Bring back what `park` took off (nothing when not parked)."""
        if not self.parked:
            return
        self.pool.alloc_buffers()
        with torch.no_grad():
            for t in self._rest:
                if t.device != self.pool.device:
                    t.data = t.data.to(self.pool.device, non_blocking=True)
        self.parked = False

    def prefetch(self, name: str) -> None:
        """The expert-switch hint of two-expert pipelines: nothing to do (the next expert's first block
        is copied when it is needed; its slot is one of the shared ones, busy with this expert now)."""

    def describe(self, device: torch.device) -> str:
        blocks = sum(len(off.blocks) for off in self.offloads.values())
        reader = next(iter(self.offloads.values())).reader
        if reader is not None:
            where = (f"read from their files by {reader.workers} workers through {len(reader.buffers)} host buffers "
                     f"of {_size(reader.nbytes)}")
        else:
            pinned = "pinned " if any(off.pinned for off in self.offloads.values()) else ""
            where = f"in {pinned}host memory"
        return (f"offload ({self.granularity}{', lazy load' if reader is not None else ''}): "
                f"{', '.join(self.offloads)}: {blocks} blocks {where}, "
                f"{len(self.pool.slots)} device buffers of {_size(self.pool.nbytes)}; the rest on {device}")


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e3:.0f} kB"


def apply_block_offload(pipeline, device: torch.device, granularity: str, num_buffers: int = 2,
                        prefetch: bool = True, lazy_load: bool = False, num_disk_workers: int = 2) -> BlockOffloads:
    """The pipeline's DiTs (`transformer_names`): blocks offloaded, the rest on `device`; stored as
    `pipeline.offload`. One slot pool for all of them (sized for the largest unit); with `lazy_load`
    one DiskReader too (lightx2v.runtime.lazy_load)."""
    models = {n: pipeline.components[n] for n in pipeline.transformer_names if pipeline.components.get(n) is not None}
    largest = max(layout.nbytes for m in models.values() for units in plan_units(m, granularity)[:1]
                  for _, layout, _ in units)
    pool = SlotPool(device, largest, num_buffers)
    reader = None
    if lazy_load:
        from lightx2v.runtime.lazy_load import DiskReader

        reader = DiskReader(largest, num_disk_workers, pin=device.type == "cuda", cuda=device.type == "cuda")
    offloads = {}
    for tag, (name, model) in enumerate(models.items()):
        offloads[name] = BlockOffload(model, pool, granularity, tag=tag, prefetch=prefetch, pin=device.type == "cuda",
                                      reader=reader)
        inside = {id(t) for row in offloads[name].units for u in row for t in u.tensors}
        with torch.no_grad():
            for _, t in _tensors(model):
                if id(t) not in inside and t.device != device:
                    t.data = t.data.to(device)
    if reader is not None:
        _check_mapped(offloads)
    pipeline.offload = BlockOffloads(offloads, pool, granularity)
    return pipeline.offload


def _check_mapped(offloads: dict[str, BlockOffload]) -> None:
    """Lazy load saves host memory only for block tensors the loader left mapped from their files."""
    import warnings

    from lightx2v.runtime.lazy_load import file_backed

    for name, off in offloads.items():
        tensors = [t for row in off.units for u in row for t in u.tensors if t.numel()]
        mapped = file_backed(tensors)
        if mapped is not None and mapped < len(tensors):
            warnings.warn(f"lazy_load: {len(tensors) - mapped} of the {name}'s {len(tensors)} block tensors are not "
                          f"mapped from its files (converted while loading: stored in another dtype, quantized or "
                          f"merged with a LoRA), so they stay in host memory", UserWarning, stacklevel=4)
