"""The memory planner: `max_vram="8GB"` (and `max_ram=`) picks how to run a model in a budget.

Design: the planner does not guess and does not measure; it asks the same estimate that refuses
requests before a run (lightx2v.runtime.memory.estimate) what a request needs, and while it does not
fit it switches on the first saver of this ladder (fastest first) that lowers the expected peak; a
saver that does not touch the peak stage stays off (greedy, so 12 GB gets the text encoder moved to
the CPU without the slower tiled VAE):

    1. as asked                 everything resident
    2. encoders offloaded       text encoder, CLIP, VAE in host memory, each on the GPU for its stage
    3. block offload            the DiTs' blocks in pinned host memory through 2 GPU buffers (+0.1%
                                time on an H200 at 14B 480P: docs/benchmarks.md)
    4. VAE tiled                decode / encode in 256 px tiles (activation memory bounded by the tile)
    5. text encoder on the CPU  umt5-xxl never on the GPU (its encode takes seconds on a CPU)
    6. activations chunked      the blocks' token-wise work PLAN_CHUNK tokens at a time
                                (lightx2v.runtime.chunking: 14B 480P activations ~4.7 -> ~2.2 GiB)
    7. phase offload            one third of a block at a time (not with compile)
    8. context K/V per block    the cross-attention K/V made again at every step (context_kv off)

The precision is the user's (`quant`, `dtype`, `quant_text_encoder`): the planner never lowers it,
and says so when even the last step does not fit. Host memory (`max_ram`): the offloaded weights live
there; when they do not fit, lazy loading (blocks read from the checkpoint's files as they are
needed) is added. Options the user set explicitly are kept (an explicit offload granularity is not
replaced; the ladder starts after it).

The estimate is asked with a margin (memory.PLAN_FACTOR of the measured activation peaks, where a
refusal counts a lower bound), and on CUDA the plan switches torch's allocator to expandable
segments (lightx2v.api.planned), so that a budget is not lost to fragmentation of the cached blocks.

The plan is made for a request size (the family's default 480P-class size unless given): a larger
request is still checked before it runs (lightx2v.runtime.memory.check_memory).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Optional

from lightx2v.config import EngineConfig, ModelConfig
from lightx2v.engine_config import OffloadConfig
from lightx2v.errors import InputError, ResourceError

PLAN_CHUNK = 2048  # tokens per chunk when the planner chunks the activations (GEMMs of 2048 rows stay efficient)
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_size(value, field: str) -> int:
    """'8GB', '8 GiB', '7.5G', '8192MB' or a number of bytes -> bytes. GB and GiB are both 2^30: cards
    sold as "8 GB" have 8 GiB."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise InputError(f"{field} must be positive, got {value!r}", field=field)
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise InputError(f"{field} must be a size like '8GB', '7.5GiB' or '8192MB', got {value!r}", field=field)
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class MemoryPlan:
    """What the planner chose: the engine to load with, and what it expects."""

    engine: EngineConfig
    steps: tuple[str, ...]        # the savers switched on, in ladder order (empty: as asked)
    device_need: int              # bytes expected on the device at the peak stage
    peak_stage: str
    host_need: int                # bytes expected in host memory (offloaded weights, frames)
    max_vram: int
    max_ram: Optional[int]

    def describe(self) -> str:
        chose = ", ".join(self.steps) if self.steps else "everything resident"
        ram = f" (max_ram {_gib(self.max_ram)})" if self.max_ram is not None else ""
        return (f"memory plan for max_vram {_gib(self.max_vram)}: {chose}; expected peak {_gib(self.device_need)} "
                f"on the GPU ({self.peak_stage}), {_gib(self.host_need)} in host memory{ram}")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _ladder(engine: EngineConfig) -> list[tuple[str, Callable[[EngineConfig], EngineConfig]]]:
    rep = dataclasses.replace
    steps: list[tuple[str, Callable[[EngineConfig], EngineConfig]]] = []
    if not engine.offload_encoders:
        steps.append(("encoders offloaded", lambda e: rep(e, offload_encoders=True)))
    if engine.offload.granularity not in ("block", "phase"):
        steps.append(("DiT block offload (2 buffers)", lambda e: rep(e, offload=OffloadConfig("block", num_buffers=2))))
    if not engine.vae_tiling:
        steps.append(("VAE tiled", lambda e: rep(e, vae_tiling=True)))
    if not engine.text_encoder_device:
        steps.append(("text encoder on the CPU", lambda e: rep(e, text_encoder_device="cpu")))
    if not engine.chunk_tokens:
        steps.append(("activations chunked", lambda e: rep(e, chunk_tokens=PLAN_CHUNK)))
    if engine.offload.granularity != "phase" and not engine.compile.enabled:
        steps.append(("DiT phase offload (2 buffers)", lambda e: rep(e, offload=OffloadConfig("phase", num_buffers=2))))
    if engine.context_kv:
        steps.append(("context K/V per block", lambda e: rep(e, context_kv=False)))
    return steps


def _has_phases(mc: ModelConfig, engine: EngineConfig, memo: dict) -> bool:
    """Whether every DiT's block declares offload phases (a family without them gets no phase offload step;
    added with hunyuanvideo-1.5, issue 17, whose dual-stream blocks declare none)."""
    from lightx2v.runtime.block_offload import repeated_blocks
    from lightx2v.runtime.memory import _meta_dit

    return all(getattr(type(repeated_blocks(_meta_dit(mc, engine, n, memo))[0]), "_offload_phases", None)
               for n in mc.dit_names)


def _superseded(taken: str, other: str) -> bool:
    # phase offload replaces block offload: once it is on, block offload is no longer a step
    return taken.startswith("DiT phase") and other.startswith("DiT block")


def host_bytes(mc: ModelConfig, engine: EngineConfig, comps: dict[str, int], frames_host: int,
               memo: dict | None = None) -> int:
    """Host memory of a plan: the offloaded weights (the DiTs unless lazily loaded; offloaded encoders;
    the text encoder on the CPU) and the decoded frames."""
    from lightx2v.runtime.memory import _block_offload_bytes, _tensor_bytes, _meta_dit

    total = frames_host
    off = engine.offload
    if off.granularity is not None:
        dits = sum(_tensor_bytes(_meta_dit(mc, engine, n, memo), engine.dtype) for n in mc.dit_names)
        if off.lazy_load:
            buffers = _block_offload_bytes(mc, engine, memo)
            unit = max(v for k, v in buffers.items() if "buffers" in k) // max(off.num_buffers, 1)
            dits = (off.num_disk_workers + 1) * unit
        total += dits
    if engine.offload_encoders or engine.text_encoder_device:
        from lightx2v.runtime.memory import weight_bytes

        full = weight_bytes(mc, dataclasses.replace(engine, offload=OffloadConfig(), offload_encoders=False,
                                                    text_encoder_device=None), memo)
        names = ("text_encoder", "clip", "vae", "tiny_vae") if engine.offload_encoders else ("text_encoder",)
        total += sum(full.get(n, 0) for n in names)
    return total


def plan_memory(mc: ModelConfig, engine: EngineConfig, max_vram, max_ram=None, *, height: Optional[int] = None,
                width: Optional[int] = None, num_frames: Optional[int] = None,
                guidance_scale: Optional[float] = None) -> MemoryPlan:
    """The engine the greedy walk of the ladder (module docstring) reaches where the request fits
    `max_vram` (and `max_ram`), or a ResourceError naming what the last one needs."""
    from lightx2v.runtime.memory import PLAN_FACTOR, estimate

    vram = parse_size(max_vram, "max_vram")
    ram = None if max_ram is None else parse_size(max_ram, "max_ram")
    if engine.torch_device().type == "cpu":
        raise InputError("max_vram plans GPU memory; the device is the CPU (use max_ram alone with a GPU, or no plan)",
                         field="max_vram")
    size = dict(height=height or 480, width=width or 832, num_frames=num_frames or 81, guidance_scale=guidance_scale)

    memo: dict = {}  # meta-built DiTs, shared by every estimate of this plan

    def judge(cand: EngineConfig):
        # a budget that counts the weights (the need itself), with the planner's margin
        est = estimate(mc, cand, **size, budget=2**62, memo=memo, factor=PLAN_FACTOR)
        host = host_bytes(mc, cand, est.components, est.host, memo)
        lazy_added = False
        if ram is not None and host > ram and cand.offload.granularity in ("block", "phase") and not cand.offload.lazy_load:
            lazy = dataclasses.replace(cand, offload=dataclasses.replace(cand.offload, lazy_load=True))
            host_lazy = host_bytes(mc, lazy, est.components, est.host, memo)
            if host_lazy < host:
                cand, host, lazy_added = lazy, host_lazy, True
        need = est.need
        fits = need <= vram and (ram is None or host <= ram)
        return cand, est, host, need, fits, lazy_added

    # greedy: while it does not fit, switch on the first saver of the ladder (the fastest) that lowers
    # the expected peak; a saver that does not touch the peak stage is left off
    cand, steps = engine, []
    cand, est, host, need, fits, lazy = judge(cand)
    remaining = [r for r in _ladder(engine) if not (r[0].startswith("DiT phase") and not _has_phases(mc, engine, memo))]
    while not fits:
        for i, (label, step) in enumerate(remaining):
            trial = judge(step(cand))
            if trial[3] < need or (trial[4] and not fits):
                cand, est, host, need, fits, lazy = trial
                steps.append(label)
                remaining = [r for j, r in enumerate(remaining) if j != i and not _superseded(label, r[0])]
                break
        else:
            break
    if fits:
        lazy = cand.offload.lazy_load and not engine.offload.lazy_load
        return MemoryPlan(cand, tuple(steps) + (("lazy load",) if lazy else ()), est.need, est.peak_stage, host, vram, ram)
    what = f"{_gib(need)} on the GPU ({est.peak_stage})" + (f" and {_gib(host)} in host memory" if ram is not None else "")
    raise ResourceError(
        f"{size['width']}x{size['height']}, {size['num_frames']} frames does not fit max_vram {_gib(vram)}"
        + (f" / max_ram {_gib(ram)}" if ram is not None else "")
        + f" even with {', '.join(steps) or 'every saver'}: that needs {what}; lower the size or frames, or the "
        "precision (quant='w8a8-fp8' / 'w8a8-int8' halves the DiT, quant_text_encoder the text encoder)")
