"""Checks before a run: the model's limits, what it was trained on, and the memory a request needs.

`check_limits` runs in the family's `check_request` (so in `prepare_request`, for the CLI before any
weight is read and for a loaded pipeline on every call); `check_memory(mc, engine, ...)` runs in the
CLI before loading (loaded=False: weights + activations) and in a loaded pipeline under its lock,
right before running (loaded=True: activations against what is free). `check_request` is both.
Each refusal is one line, with `field` set where one request field is at fault.

1. The model's hard limits (InputError, always): the DiT's token grid must fit its position table
   (Wan2.1: rope_max_seq_len 1024 positions per axis: sides up to 16384 pixels, 4093 frames).
2. What the model was trained on (InputError unless `force`): refused beyond TRAINED_FACTOR = 4
   times the trained pixels per frame (Wan2.1: 1280x720 = 921,600 -> 3,686,400, e.g. 2560x1440)
   or frames (81 -> 324), and more steps than the scheduler's training timesteps
   (num_train_timesteps, 1000): far outside, the output is noise and the run takes very long.
3. Memory (ResourceError, with `force` too): the estimate below against what the device has now.
   It is meant as a lower bound (LOWER_BOUND = 0.85 of the measured activation peaks, no margin
   on top), so a refusal means the request cannot fit; one that passes may still run out, which
   then is one line too (lightx2v.runtime.oom).

Estimate = weights on the device (none once loaded) + the largest stage's activations:
    weights        each component built on the meta device: its parameters in the dtype they load
                   in (the engine's; the VAE's fp32; the model's `_keep_in_fp32`), quantized
                   linears (the engine's quant or a pre-quantized DiT file) at 1 byte a weight
    text encoder   text_bytes x prompts (2 with CFG)
    image encoder  (i2v / flf2v) the VAE encodes a video of the request's size: as the decode
    denoise        token_bytes x tokens x batch (2 with batched CFG); a math attention backend
                   ("reference") adds 8 x heads x tokens^2 x batch (fp32 scores and softmax). SDPA's
                   flash / memory-efficient kernels on CUDA and torch's CPU kernel hold no
                   tokens^2 (measured: 16k tokens, +8 MB instead of 1 GB of scores). With token
                   chunking (chunk_tokens): chunk_token_bytes x tokens + token_bytes x chunk_tokens,
                   per sample. Plus the kept cross-attention K/V (context_kv): context_bytes per
                   prompt (2 with CFG: each branch's are kept)
    VAE decode     max(pixel_bytes x H x W + 12 x H x W x F, video_bytes x H x W x F): one time
                   chunk's working set and the frames decoded so far (fp32 RGB), or the finished
                   video with its two conversion temporaries (36 B a pixel-frame); with vae_tiling
                   the working set is one tile's (vae_tile_size^2 pixels instead of H x W)
    host           on a CUDA device the host also holds the frames: 15 B a pixel-frame (fp32 + uint8)
tokens: the DiT's token grid (Geometry.token_grid), Wan2.1 480x832x81 -> 21 x 30 x 52 = 32,760.
The family gives token_bytes, pixel_bytes, text_bytes (FamilySpec.memory -> MemoryProfile). Wan2.1's
formulas (models/wan/spec.py) fit peaks measured with torch.cuda.max_memory_allocated on an H200
(torch 2.11, 2-block DiTs of the real widths, the real VAE): DiT 1.3B bf16 57.4-59.0 KB a token
(formula 58.1), fp32 96.8 (97.0); 14B bf16 153.7-154.3 (153.6), fp32 193.2 (195.1); VAE decode
22.2 KB a pixel (first chunk) and 23.5 (later chunks; formula 23.4). The same runs under a memory
cap 8-14% (DiT) and 1% (VAE) below those peaks ran out, hence LOWER_BOUND. On the CPU (peak RSS)
they took up to 20% more (fp32 DiT 118 KB a token; VAE 25.8 KB a pixel). A whole pipeline (1.3B-wide
DiT, the real VAE, bf16, H200) peaked 1.18x above the estimate: 9.79 GB at 832x480x81 (estimate
8.28), 22.04 GB at 1280x720x41 (18.73). benchmarks/memory_peaks.py measures these again.

What the device has: CUDA, torch.cuda.mem_get_info's free bytes (plus what torch's allocator holds
unused, once loaded); CPU, MemAvailable of /proc/meminfo, capped by a cgroup's memory limit
(containers); elsewhere psutil's available memory when installed, else no memory check.

The per-field limits of a request are in lightx2v.config (guidance <= 50, 0 < shift <= 100,
fps <= 1000, finite latents) and lightx2v.loading.lora (|LoRA strength| <= 10).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lightx2v.config import EngineConfig, ModelConfig
from lightx2v.errors import InputError, LightX2VError, ResourceError

TRAINED_FACTOR = 4
DEFAULT_TRAIN_TIMESTEPS = 1000   # the schedulers' default (lightx2v.schedulers)
LOWER_BOUND = 0.85               # of the measured activation peaks (see the module docstring)
PLAN_FACTOR = 1.15               # the planner's margin over them: allocator rounding, what the formulas leave out
MATH_ATTENTION = ("reference",)  # backends that hold the [heads, tokens, tokens] scores
HOST_FRAME_BYTES = 15            # a decoded pixel-frame on the host: fp32 RGB + uint8 RGB
CHUNK_FRAME_BYTES = 12           # a decoded pixel-frame kept while later chunks decode (fp32 RGB)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


# ---------------------------------------------------------------- limits (1, 2)


def check_limits(mc: ModelConfig, *, height: int, width: int, num_frames: int,
                 steps: int | None = None, force: bool = False) -> None:
    """The model's hard limits, then (unless `force`) what it was trained on; one-line InputErrors."""
    geo = mc.spec.geometry(mc)
    _check_positions(geo, height, width, num_frames)
    if force:
        return
    if geo.trained_size is not None:
        th, tw = geo.trained_size
        most = TRAINED_FACTOR * th * tw
        if height * width > most:
            raise InputError(
                f"{width}x{height} is {height * width:,} pixels a frame, {height * width / (th * tw):,.0f}x the "
                f"{tw}x{th} {mc.spec.title} was trained on; at most {TRAINED_FACTOR}x ({most:,} pixels, e.g. "
                f"{2 * tw}x{2 * th}) unless forced (force=True, --force)", field="height")
    if geo.trained_frames is not None and num_frames > TRAINED_FACTOR * geo.trained_frames:
        raise InputError(
            f"num_frames {num_frames} is far beyond the {geo.trained_frames} frames {mc.spec.title} was trained on; "
            f"at most {TRAINED_FACTOR * geo.trained_frames} unless forced (force=True, --force)", field="num_frames")
    most_steps = num_train_timesteps(mc)
    if steps is not None and steps > most_steps:
        raise InputError(
            f"num_inference_steps {steps} is more than the scheduler's {most_steps} training timesteps; "
            f"at most {most_steps} unless forced (force=True, --force)", field="num_inference_steps")


def _check_positions(geo, height: int, width: int, num_frames: int) -> None:
    if geo.max_positions is None:
        return
    grid = geo.token_grid(num_frames, height, width)
    st, sh, sw = geo.stride
    pt, ph, pw = geo.patch
    n = geo.max_positions
    most = {"num_frames": 1 + (n * pt - 1) * st, "height": n * ph * sh, "width": n * pw * sw}
    for name, value, cells in (("num_frames", num_frames, grid[0]), ("height", height, grid[1]),
                               ("width", width, grid[2])):
        if cells > n:
            raise InputError(f"{name} {value} needs {cells:,} DiT positions; this model's position table covers "
                             f"{n} ({name} at most {most[name]})", field=name)


def num_train_timesteps(mc: ModelConfig) -> int:
    cfg = mc.defaults.scheduler_config or {}
    return int(cfg.get("num_train_timesteps", DEFAULT_TRAIN_TIMESTEPS))


# ---------------------------------------------------------------- the estimate (3)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a request needs on `device`: weights (0 once loaded) + the largest stage's activations."""

    device: str
    weights: int
    stages: Mapping[str, int]            # stage -> peak activation bytes
    available: int | None             # free on the device now (None: unknown)
    host: int = 0                        # host bytes for the frames (device not the CPU)
    host_available: int | None = None
    components: Mapping[str, int] = field(default_factory=dict)  # weights per component
    weights_counted: bool = True         # False: not added, the activations alone do not fit

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=lambda s: self.stages[s])

    @property
    def need(self) -> int:
        return self.weights + max(self.stages.values(), default=0)

    def fits(self) -> bool:
        device_ok = self.available is None or self.need <= self.available
        return device_ok and (self.host_available is None or self.host <= self.host_available)


def estimate(mc: ModelConfig, engine: EngineConfig, *, height: int, width: int, num_frames: int,
             guidance_scale: float | None = None, decode: bool = True, loaded: bool = False,
             budget: int | None = None, memo: dict | None = None, factor: float = LOWER_BOUND) -> MemoryEstimate:
    """What a request needs (see the module docstring); `loaded`: the weights are already in place;
    `budget`: the bytes the device is taken to have (the planner's max_vram) instead of what it has free;
    `memo`: a dict kept across calls for one model config (the planner's), so meta models build once;
    `factor`: the share of the measured activation peaks counted (LOWER_BOUND for a refusal: a lower
    bound; the planner asks with a margin above them, PLAN_FACTOR)."""
    device = engine.torch_device()
    profile_of = mc.spec.memory
    if profile_of is None:
        return MemoryEstimate(str(device), 0, {}, None)
    prof = profile_of(mc, engine.dtype)
    geo = mc.spec.geometry(mc)
    t, h, w = geo.token_grid(num_frames, height, width)
    tokens, pixels = t * h * w, height * width
    g = mc.defaults.guidance_scale if guidance_scale is None else guidance_scale
    cfg = g != 1.0
    batch = 2 if cfg and engine.cfg_mode == "batched" else 1
    if engine.chunk_tokens and tokens > engine.chunk_tokens and prof.chunk_token_bytes:
        denoise = (prof.chunk_token_bytes * tokens + prof.token_bytes * engine.chunk_tokens) * batch
    else:
        denoise = prof.token_bytes * tokens * batch
    if engine.context_kv:
        denoise += prof.context_bytes * (2 if cfg else 1)
    if _attention_name(engine) in MATH_ATTENTION:
        denoise += 8 * prof.attention_heads * tokens * tokens * batch
    vae_scale = 1.0 if engine.vae_dtype is None else engine.vae_dtype.itemsize / 4  # the profile is fp32
    # tiled (vae_tiling): one tile's working set at a time (a tile of vae_tile_size^2 pixels; measured
    # on the H200 at 720P x 81 frames: 2.69 GiB peak with 256 px tiles against 17.4 whole-frame)
    tile = engine.vae_tile_size if engine.vae_tiling else prof.vae_tile  # (a family may tile by default)
    work_px = min(pixels, tile ** 2) if tile else pixels
    work_px *= num_frames if prof.vae_whole_clip else 1  # a VAE with no time chunks: every frame of the tile
    video = max(vae_scale * prof.pixel_bytes * work_px + CHUNK_FRAME_BYTES * pixels * num_frames,
                prof.video_bytes * pixels * num_frames)
    stages = {"text encoder": prof.text_bytes * (2 if cfg else 1), "denoise": denoise}
    if mc.task != "t2v":
        stages["image encoder"] = video
    if decode:
        stages["VAE decode"] = video
    stages = {k: int(factor * v) for k, v in stages.items()}
    available = available_bytes(device, loaded=loaded) if budget is None else budget
    # the weights (components built on meta) only matter when the activations alone fit
    counted = not loaded and available is not None and max(stages.values()) <= available
    comps = weight_bytes(mc, engine, memo) if counted else {}
    _stage_held(comps, stages, engine, decode, mc.tiny_vae is not None)
    host = HOST_FRAME_BYTES * pixels * num_frames if decode and device.type != "cpu" else 0
    return MemoryEstimate(str(device), sum(comps.values()), stages, available, host=host,
                          host_available=host_available_bytes() if host else None, components=comps,
                          weights_counted=counted or loaded)


def _stage_held(comps: dict, stages: dict, engine: EngineConfig, decode: bool, tiny_vae: bool) -> None:
    """Encoders that are not resident (lightx2v.runtime.engine.place_encoders): with `offload_encoders`
    each is on the device only during its stage, so its weights join that stage's peak instead of the
    resident weights; the text encoder on the CPU is not on the device at all. In place."""
    if engine.text_encoder_device:
        comps.pop("text_encoder", None)
    if not engine.offload_encoders:
        return
    held = {n: comps.pop(n) for n in ("text_encoder", "clip", "vae", "tiny_vae") if n in comps}
    if engine.offload.granularity in ("block", "phase") and "denoise" in stages:
        # the block-offloaded DiTs' buffers and the rest outside their blocks are parked while an encoder
        # or the VAE has the device (BlockOffloads.park): they count in the denoise only
        stages["denoise"] += sum(comps.pop(k) for k in [k for k in comps if "(offload" in k])
    if "text encoder" in stages:
        stages["text encoder"] += held.get("text_encoder", 0)
    if "image encoder" in stages:  # the VAE encodes, then the CLIP tower: one of them on the device at a time
        stages["image encoder"] = max(stages["image encoder"] + held.get("vae", 0), held.get("clip", 0))
    if decode and "VAE decode" in stages:
        stages["VAE decode"] += held.get("tiny_vae" if tiny_vae else "vae", 0)


def check_memory(mc: ModelConfig, engine: EngineConfig, *, height: int, width: int, num_frames: int,
                 guidance_scale: float | None = None, decode: bool = True, loaded: bool = False) -> MemoryEstimate:
    """The estimate, or a ResourceError naming it, what the device has, and what to lower."""
    est = estimate(mc, engine, height=height, width=width, num_frames=num_frames, guidance_scale=guidance_scale,
                   decode=decode, loaded=loaded)
    if not est.fits():
        raise ResourceError(_refusal(est, engine, describe_request(height, width, num_frames)))
    return est


def check_request(mc: ModelConfig, engine: EngineConfig, *, height: int, width: int, num_frames: int,
                  steps: int | None = None, force: bool = False, loaded: bool = False,
                  guidance_scale: float | None = None, decode: bool = True) -> MemoryEstimate:
    """Everything checked before a run (limits, trained range unless `force`, memory); see the module docstring."""
    check_limits(mc, height=height, width=width, num_frames=num_frames, steps=steps, force=force)
    return check_memory(mc, engine, height=height, width=width, num_frames=num_frames,
                        guidance_scale=guidance_scale, decode=decode, loaded=loaded)


def describe_request(height: int, width: int, num_frames: int) -> str:
    """'832x480, 81 frames' (for messages)."""
    return f"{width}x{height}, {num_frames} frame{'' if num_frames == 1 else 's'}"


def _refusal(est: MemoryEstimate, engine: EngineConfig, request: str) -> str:
    if est.available is None or est.need <= est.available:
        return (f"{request} needs at least {_gb(est.host)} of host memory for the decoded frames, "
                f"{_gb(est.host_available or 0)} is available; lower the size or the number of frames")
    stage = est.peak_stage
    if est.components:
        what = f"{_gb(est.need)} on {est.device} (weights {_gb(est.weights)} + {stage} {_gb(est.stages[stage])})"
    elif est.weights_counted:  # loaded: the weights are in place already
        what = f"{_gb(est.need)} more on {est.device} for the {stage}"
    else:
        what = f"{_gb(est.need)} on {est.device} for the {stage} alone"
    if est.weights > est.available:
        lower = ("the weights alone do not fit: use quantization (w8a8-int8 / w8a8-fp8), a smaller model or "
                 "dtype, or a device with more memory")
    elif stage == "denoise" and engine.cfg_mode == "batched":
        lower = "lower the size or the number of frames, or run the CFG branches one by one (cfg_mode sequential)"
    else:
        lower = "lower the size or the number of frames"
    return f"{request} needs at least {what}, {_gb(est.available)} is free there; {lower}"


def _attention_name(engine: EngineConfig) -> str:
    """The self-attention backend (the one that sees every token: its memory grows with tokens^2)."""
    from lightx2v.ops.attention import resolve_attention

    name = engine.attention_for("self")
    try:
        return resolve_attention(name, engine.torch_device(), engine.dtype).name
    except LightX2VError:  # a backend that cannot run here is refused when loading, with its own message
        return name


# ---------------------------------------------------------------- weights


def weight_bytes(mc: ModelConfig, engine: EngineConfig, memo: dict | None = None) -> dict[str, int]:
    """Bytes of each component's weights on the device once loaded for `engine` (built on meta: nothing
    is read). With model offload (lightx2v.runtime.offload) the DiTs live in host memory and the device
    holds the largest one (two with prefetch on a two-DiT model: during the step before the switch).
    With block / phase offload (lightx2v.runtime.block_offload) the device holds what is outside every
    DiT's blocks and the shared buffers: num_buffers x the largest block (or phase)."""
    off = engine.offload
    if off.granularity in ("block", "phase"):
        dits = _block_offload_bytes(mc, engine, memo)
    else:
        dits = {name: _tensor_bytes(_meta_dit(mc, engine, name, memo), engine.dtype) for name in mc.dit_names}
    if off.granularity == "model":
        on_device = max(dits.values()) * (2 if off.prefetch and len(dits) > 1 else 1)
        dits = {"dit (offload: on the device at a time)": on_device}
    out = dict(dits)
    for comp in mc.spec.components:
        if comp.needed(mc):
            key = ("component", comp.name, engine.dtype)
            if memo is None or key not in memo:
                with torch.device("meta"):
                    model = comp.build(mc)
                size = _tensor_bytes(model, comp.dtype(engine.dtype))
                if memo is not None:
                    memo[key] = size
            out[comp.name] = size if memo is None else memo[key]
    return out


def _meta_dit(mc: ModelConfig, engine: EngineConfig, name: str = "dit", memo: dict | None = None) -> torch.nn.Module:
    """DiT `name` built on meta as the engine would load it (quantized or not); `memo` keeps it by
    what decides its tensors (estimate's `memo`)."""
    from lightx2v.runtime.engine import quant_on_load

    key = ("dit", name, engine.dtype, engine.quant.scheme, quant_on_load(engine))
    if memo is not None and key in memo:
        return memo[key]
    model = _build_meta_dit(mc, engine, name)
    if memo is not None:
        memo[key] = model
    return model


def _build_meta_dit(mc: ModelConfig, engine: EngineConfig, name: str) -> torch.nn.Module:
    from lightx2v.loading.dit_files import prepare_for_quantized
    from lightx2v.quant import apply_quant
    from lightx2v.runtime.engine import quant_on_load

    with torch.device("meta"):
        model = mc.spec.dit_format.build(getattr(mc.arch, name))
    src = mc.dit_source_for(name)
    if src is not None and src.quant is not None:
        prepare_for_quantized(model, src, dtype=engine.dtype)
    elif quant_on_load(engine) is not None:  # with a LoRA merge first, the float DiT is whole in memory
        apply_quant(model, engine.quant.scheme, compute_dtype=engine.dtype)
    return model


def _block_offload_bytes(mc: ModelConfig, engine: EngineConfig, memo: dict | None = None) -> dict[str, int]:
    from lightx2v.runtime.block_offload import offload_split

    outside, unit, blocks = 0, 0, 0
    for name in mc.dit_names:
        model = _meta_dit(mc, engine, name, memo)
        o, u, n = offload_split(model, engine.offload.granularity, _tensor_sizes(model, engine.dtype))
        outside, unit, blocks = outside + o, max(unit, u), blocks + n
    n = engine.offload.num_buffers
    return {f"dit (offload {engine.offload.granularity}: outside the blocks)": outside,
            f"dit (offload {engine.offload.granularity}: {n} buffers for {blocks} blocks)": n * unit}


def _tensor_sizes(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, int]:
    """Bytes of each tensor of `model` once loaded in `dtype` (the loader's fp32 and quantized rules)."""
    keep = tuple(getattr(model, "_keep_in_fp32", ()))
    sizes = {}
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if not t.is_floating_point() or t.element_size() == 1:  # int8 / fp8 weights stay as stored
            size = t.element_size()
        elif name.endswith("weight_scale") or any(k in name for k in keep):
            size = 4
        else:
            size = dtype.itemsize
        sizes[name] = t.numel() * size
    return sizes


def _tensor_bytes(model: torch.nn.Module, dtype: torch.dtype) -> int:
    return sum(_tensor_sizes(model, dtype).values())


# ---------------------------------------------------------------- what the device has


def available_bytes(device: torch.device, *, loaded: bool = False) -> int | None:
    """Free bytes on `device` now (None: unknown). CUDA: what the driver has free, plus (`loaded`)
    what torch's allocator holds unused; CPU: the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if loaded:
            free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free)
    if device.type == "cpu":
        return host_available_bytes()
    return None


def host_available_bytes() -> int | None:
    """MemAvailable (Linux), capped by the cgroup's limit; psutil elsewhere; None when unknown."""
    found = [v for v in (_meminfo_available(), _cgroup_free()) if v is not None]
    if found:
        return min(found)
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_free(root: str = "/sys/fs/cgroup") -> int | None:
    """A cgroup's memory limit minus what it uses (reclaimable file cache not counted); None: no limit."""
    base = Path(root)
    for limit, usage, stat, inactive in (("memory.max", "memory.current", "memory.stat", "inactive_file"),
                                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
                                          "memory/memory.stat", "total_inactive_file")):
        try:
            text = (base / limit).read_text().strip()
        except OSError:
            continue
        if text == "max" or int(text) >= 2**60:
            return None
        try:
            used = int((base / usage).read_text())
            cache = dict(_stat_line(line) for line in (base / stat).read_text().splitlines()).get(inactive, 0)
        except (OSError, ValueError):
            return None
        return max(int(text) - used + cache, 0)
    return None


def _stat_line(line: str) -> tuple[str, int]:
    key, _, value = line.partition(" ")
    return key, int(value or 0)

