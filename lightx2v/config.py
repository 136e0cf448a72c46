"""Typed, frozen configuration in three layers (DESIGN principle 6).

- `ModelConfig`   what the checkpoint is: family, task, on-disk layout, component files and
                  architecture configs (the family's, typed there), and its sampling defaults.
- `EngineConfig`  how to run it: device, dtype, attention backend, and one typed sub-config
                  per engine transform (quant, LoRA, compile ...), applied by runtime/engine.py.
- `SamplingParams` one request: prompt, size, frames, steps, guidance, seed ...

Each is a frozen dataclass; `SamplingParams.validate()` turns bad input into one clear line.
Environment variables are never read here (only the CLI reads them).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol, Union

import torch

from lightx2v.errors import InputError

if TYPE_CHECKING:
    from lightx2v.loading.dit_files import DitSource

OUTPUT_TYPES = ("mp4", "webm", "gif", "png", "np", "pt", "latent")
IMAGE_OUTPUT_TYPES = ("png",)          # one image: num_frames must be 1
FILE_OUTPUT_TYPES = ("mp4", "webm", "gif", "png")  # written to output_path (lightx2v.io.output)
# how a conditioning image is fitted to the frame (see lightx2v.pipelines.wan_image)
RESIZE_MODES = ("area", "crop", "pad")
# request limits (validate): CFG scales in use are 1 to ~20; released shifts 1 to 17; fps above
# 1000 is no video a player shows
GUIDANCE_MAX = 50.0
SHIFT_MAX = 100.0
FPS_MAX = 1000
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
          "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """'bf16' | 'fp16' | 'fp32' (or a torch.dtype) -> torch.dtype."""
    if isinstance(value, torch.dtype):
        if value not in DTYPES.values():
            raise InputError(f"dtype {value} is not supported; expected one of bf16, fp16, fp32")
        return value
    try:
        return DTYPES[str(value).lower()]
    except KeyError:
        raise InputError(f"unknown dtype {value!r}; expected one of bf16, fp16, fp32") from None


@dataclass(frozen=True)
class SamplingDefaults:
    """Per-checkpoint defaults, from its scheduler config or the family's preset."""

    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    shift: float = 5.0
    solver: str = "unipc"
    # "official": sigmas as wan/utils/fm_solvers*.py; "diffusers": as diffusers' schedulers.
    convention: str = "official"
    # The diffusers-layout scheduler_config.json, honoured as-is when present.
    scheduler_config: Optional[Mapping] = None
    negative_prompt: str = ""
    fps: int = 16
    # (max_pixels, shift): the shift for sizes up to max_pixels (Wan2.1 I2V: 3.0 up to 832*480)
    area_shift: Optional[tuple[int, float]] = None
    # options of the default solver (the distill solver's step list)
    solver_options: Optional[Mapping] = None
    # the guidance scale of a second expert (Wan2.2 low-noise); None: one scale for all
    guidance_scale_2: Optional[float] = None
    # the video a request gets when it names no size or frame count
    height: int = 480
    width: int = 832
    num_frames: int = 81

    def shift_for(self, height: int, width: int) -> float:
        if self.area_shift is not None and height * width <= self.area_shift[0]:
            return self.area_shift[1]
        return self.shift


class ArchConfig(Protocol):
    """A family's architecture configs (e.g. lightx2v.models.wan.layouts.WanArch); every family has a DiT."""

    dit: Any


@dataclass(frozen=True)
class ModelConfig:
    """What was found on disk (lightx2v.loading.detect, through the family's spec)."""

    family: str                         # a registered family name: "wan2.1"
    task: str                           # one of the family's tasks: "t2v"
    layout: str                         # one of the family's layouts: "official" | "diffusers"
    root: Path
    files: Mapping[str, Union[str, tuple[str, ...]]]  # component -> file or files (the family names them)
    arch: ArchConfig                    # the family's architecture configs
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    dit_source: Optional["DitSource"] = None  # the DiT file given by the user (--dit-path), if any
    distill: Optional[Any] = None       # the family's preset match when the checkpoint is step-distilled (why we think so)
    # a two-expert model's second DiT ("dit_2", files["dit_2"]) given by the user (--dit-path-2), if any
    dit_source_2: Optional["DitSource"] = None

    @property
    def dit(self) -> Any:
        """The DiT's architecture config (every family has one)."""
        return self.arch.dit

    @property
    def dit_names(self) -> tuple[str, ...]:
        """The DiTs of this checkpoint: ("dit",), or ("dit", "dit_2") for two experts (Wan2.2 A14B)."""
        return ("dit", "dit_2") if getattr(self.arch, "dit_2", None) is not None else ("dit",)

    def dit_source_for(self, name: str) -> Optional["DitSource"]:
        """The user's file for DiT `name` ("dit" / "dit_2"); None: the folder's own."""
        return {"dit": self.dit_source, "dit_2": self.dit_source_2}.get(name)

    @property
    def spec(self):
        """The family's FamilySpec."""
        from lightx2v.models.registry import get_family

        return get_family(self.family)


@dataclass(frozen=True)
class QuantConfig:
    """`apply_quant`: quantize the DiT's declared linears with one scheme: "w8a8-int8" / "w8a8-fp8"
    (8-bit activations and GEMM) or "w8a16-int8" / "w8a16-fp8" (weight-only, dequantized)."""

    scheme: Optional[str] = None


@dataclass(frozen=True)
class LoraConfig:
    """LoRAs: (path, strength) pairs, merged into the weights or kept as run-time hooks (`set_lora`).

    `loras` go to every DiT (both experts of a two-expert model). `per_dit` gives LoRAs to one DiT
    only: its key is a DiT's component name ("dit", "dit_2") or an expert name its pipeline declares
    (`expert_components`; Wan2.2 A14B: "high" -> "dit", "low" -> "dit_2"). Before loading,
    lightx2v.loading.lora_plan.resolve_loras checks the keys against the model and lets the family
    route paths that name their expert (a Wan2.2-Lightning folder, LightX2V's `..._high_noise_lora_...`
    files) from `loras` into `per_dit`.
    """

    loras: tuple[tuple[str, float], ...] = ()
    mode: str = "merge"                 # "merge" | "dynamic"
    allow_unmatched: bool = False
    per_dit: Mapping[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("merge", "dynamic"):
            raise InputError(f"lora_mode must be 'merge' or 'dynamic', got {self.mode!r}")
        if not isinstance(self.per_dit, Mapping):
            raise InputError(f"per_dit must map a DiT or expert name to (path, strength) pairs, got {self.per_dit!r}")
        pairs = (lambda items: tuple((str(p), s) for p, s in items))
        object.__setattr__(self, "loras", pairs(self.loras))
        # a plain dict of tuples (a copy: the caller's dict is not shared), so the config pickles
        object.__setattr__(self, "per_dit", {str(k): pairs(v) for k, v in self.per_dit.items() if v})

    @property
    def paths(self) -> tuple[str, ...]:
        """Every LoRA path, for every DiT or one (file checks, name hints)."""
        return tuple(p for p, _ in self.loras) + tuple(p for items in self.per_dit.values() for p, _ in items)

    @property
    def count(self) -> int:
        """How many LoRAs were given (one given for every DiT counts once)."""
        return len(self.loras) + sum(len(v) for v in self.per_dit.values())


@dataclass(frozen=True)
class CompileConfig:
    """Regional `torch.compile` of the model's declared repeated blocks (each block compiled once,
    reused by all: a short first call, the speed of a whole-model compile)."""

    enabled: bool = False
    mode: Optional[str] = None          # torch.compile mode: None, "max-autotune-no-cudagraphs" ...
    backend: str = "inductor"
    fullgraph: bool = False
    dynamic: Optional[bool] = None
    # also the VAE decoder's blocks (lightx2v.runtime.vae_compile; branch vae): off by default
    vae: bool = False


@dataclass(frozen=True)
class OffloadConfig:
    """`apply_offload`: the DiTs kept in host memory, only the one running on the device
    (lightx2v.runtime.offload). granularity None (off) or "model"; `prefetch`: copy the next DiT of
    a two-expert model during the step before the switch."""

    granularity: Optional[str] = None
    prefetch: bool = True

    def __post_init__(self) -> None:
        if self.granularity not in OFFLOAD_GRANULARITIES:
            raise InputError(f"offload must be one of {', '.join(str(g) for g in OFFLOAD_GRANULARITIES[1:])} "
                             f"(or None: off), got {self.granularity!r}", field="offload")


OFFLOAD_GRANULARITIES = (None, "model")


@dataclass(frozen=True)
class EngineConfig:
    """How to run: where, in which precision, and every transform (lightx2v.runtime.engine applies
    them in one place, in one order). A sub-config per transform; more join as they land."""

    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    # one backend name for every attention, or one per role: {"self": ..., "cross": ...} (the DiT's
    # self- and cross-attention; encoders take "self"), also written "self=sage8,cross=sdpa_cudnn"
    attention: str | Mapping[str, str] = "auto"
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    # where components are loaded before the engine places them: None = the target device
    staging: Optional[str] = None
    # CFG branches: "sequential" (two calls of batch 1, as the references) or "batched" (one call of batch 2)
    cfg_mode: str = "sequential"
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    # the VAE's precision (encode and decode); None: the family's (fp32, as the references decode).
    # bf16 decodes 480P x 81 frames in 1.79 s instead of 2.71 s on an H200 at a relative error of
    # 1.5e-2 against strict fp32 (TF32 convolutions, the fp32 path: 7.2e-3); docs/benchmarks.md
    vae_dtype: Optional[torch.dtype] = None
    # each DiT's cross-attention K/V computed once per generation, not at every step (bit-identical;
    # ~0.4 GB per CFG branch at Wan 14B; lightx2v.runtime.context_kv)
    context_kv: bool = True
    # the text encoder's / image encoder's block linears quantized with a lightx2v.quant scheme (after
    # loading; their embeddings, norms and position bias stay): umt5-xxl 11 GB -> ~5.7 GB in 8 bits
    quant_text_encoder: Optional[str] = None
    quant_image_encoder: Optional[str] = None
    # the VAE decoder in channels-last(-3d) layout (WanVAE.set_memory_format); None: on CUDA (H200,
    # 480P x 81 frames: fp32 2.50 -> 2.32 s, bf16 1.63 -> 1.45 s, less memory; docs/benchmarks.md)
    vae_channels_last: Optional[bool] = None
    # mp4 files encoded while the VAE decodes (lightx2v.io.stream); off: encoded after the decode
    stream_save: bool = True
    # the DiT blocks' elementwise ops (lightx2v.ops.fused): "torch" (the reference), "triton" (fused
    # kernels), "auto" (triton where it runs on the device, else torch)
    kernels: str = "torch"
    # self-attention q, k, v as one GEMM (lightx2v.runtime.fuse; views, no second copy of the
    # weights); off by default: no gain measured at Wan 14B on the H200 (docs/benchmarks.md)
    fuse_qkv: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention", parse_attention(self.attention))
        if isinstance(self.vae_dtype, str):
            object.__setattr__(self, "vae_dtype", parse_dtype(self.vae_dtype))
        if self.offload is None or isinstance(self.offload, str):  # shorthand: offload="model"
            object.__setattr__(self, "offload", OffloadConfig(self.offload))
        # shorthand: quant="w8a8-int8", compile=True
        if self.quant is None or isinstance(self.quant, str):
            object.__setattr__(self, "quant", QuantConfig(self.quant))
        if isinstance(self.compile, bool):
            object.__setattr__(self, "compile", CompileConfig(enabled=self.compile))
        if self.cfg_mode not in ("sequential", "batched"):
            raise InputError(f"cfg_mode must be 'sequential' or 'batched', got {self.cfg_mode!r}")
        if self.kernels not in ("torch", "triton", "auto"):
            raise InputError(f"kernels must be 'torch', 'triton' or 'auto', got {self.kernels!r}", field="kernels")

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def attention_for(self, role: str) -> str:
        """The backend name asked for attention of `role` ("self" or "cross")."""
        return self.attention if isinstance(self.attention, str) else self.attention[role]

    def staging_device(self) -> torch.device:
        return self.torch_device() if self.staging is None else resolve_device(self.staging)


ATTENTION_ROLES = ("self", "cross")


def parse_attention(value) -> str | dict[str, str]:
    """An attention choice: one name (kept as a str) or a backend per role -> {"self": .., "cross": ..}
    (a role not given: "auto"). Accepts a mapping or "self=NAME,cross=NAME"; names are checked
    against the registry later (lightx2v.ops.attention.resolve_attention), roles here."""
    if isinstance(value, str) and "=" not in value:
        if not value.strip():
            raise InputError("attention must name a backend (auto, ...) or self=NAME,cross=NAME, got ''", field="attention")
        return value
    if isinstance(value, str):
        pairs = [part.partition("=") for part in value.split(",") if part.strip()]
        if any(not sep or not name.strip() for _, sep, name in pairs):
            raise InputError(f"attention {value!r}: expected NAME or self=NAME,cross=NAME", field="attention")
        value = {role.strip(): name.strip() for role, _, name in pairs}
    if not isinstance(value, Mapping):
        raise InputError(f"attention must be a backend name or a mapping of roles to names, got {value!r}",
                         field="attention")
    unknown = sorted(set(value) - set(ATTENTION_ROLES))
    if unknown:
        raise InputError(f"attention roles are {' and '.join(ATTENTION_ROLES)}, got {', '.join(map(repr, unknown))}",
                         field="attention")
    roles = {role: str(value.get(role, "auto")) for role in ATTENTION_ROLES}
    return roles["self"] if len(set(roles.values())) == 1 else roles


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' | 'cuda[:i]' | 'cpu' -> torch.device; anything this machine cannot run on is one
    InputError naming the devices it has. 'auto' without CUDA warns that the CPU is slow."""
    import warnings

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(cuda)] if cuda else [])
    here = f"this machine has: {', '.join(have)}"
    if name == "auto":
        if cuda:
            return torch.device("cuda")
        warnings.warn("no CUDA device found; running on the CPU (slow)", UserWarning, stacklevel=2)
        return torch.device("cpu")
    try:
        dev = name if isinstance(name, torch.device) else (
            torch.device(name) if isinstance(name, str) and name.strip() == name else None)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None:
        raise InputError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N ({here})", field="device")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {name!r} is not supported (lightx2v runs on CUDA GPUs and the CPU); {here}",
                         field="device")
    if dev.type == "cuda" and not cuda:
        raise InputError(f"device {name!r} was asked for but CUDA is not available; {here} "
                         "(use --device cpu, slow, or a GPU machine)", field="device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= cuda:
        raise InputError(f"device {name!r} does not exist; {here}", field="device")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise InputError(f"device {name!r} does not exist; {here}", field="device")
    return dev


@dataclass(frozen=True)
class SamplingParams:
    """One generation request. `None` fields take the checkpoint's defaults.

    It carries no family geometry: the family checks sizes and frames (its `Geometry`). An image
    request is `num_frames=1` with an image output type ("png", "np", "pt"). It round-trips through
    JSON (`to_dict` / `from_dict`): images as paths or PNG bytes, `latents` as raw float32 bytes;
    `callback` is not serialized.

    Files (output_type mp4, webm, gif, png): the extension of `output_path` decides the format, and
    must agree with `output_type`, except the default "mp4", which the extension overrides
    (output_path="a.gif" writes a GIF). A folder (`out/`) gets the default file name inside;
    an existing file is replaced with a warning unless `overwrite` is False (refused before any
    work); /dev/null and FIFOs are written through. lightx2v.io.output has the whole rule.
    """

    prompt: str
    negative_prompt: Optional[str] = None
    image: Any = None            # first frame (i2v / flf2v): PIL image, path, or encoded bytes
    last_image: Any = None       # last frame (flf2v)
    resize_mode: str = "area"
    height: Optional[int] = None          # None: the checkpoint's (SamplingDefaults)
    width: Optional[int] = None
    num_frames: Optional[int] = None
    num_inference_steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    guidance_scale_2: Optional[float] = None   # a second expert's scale (Wan2.2); None: the first's
    shift: Optional[float] = None
    solver: Optional[str] = None
    seed: Optional[int] = None
    latents: Optional[torch.Tensor] = None
    output_type: str = "mp4"
    output_path: Optional[str] = None
    fps: Optional[int] = None
    callback: Optional[Callable] = None
    # an existing output file is replaced (with a warning); False refuses it
    overwrite: bool = True
    # video quality (ffmpeg -crf, 0-51; lower: better and larger): default mp4 17, webm 30; gif has none
    crf: Optional[int] = None
    # run sizes, frames and steps far outside what the model was trained on (lightx2v.runtime.memory);
    # the model's hard limits and a memory estimate above what the device has are refused still
    force: bool = False

    def with_defaults(self, d: SamplingDefaults) -> "SamplingParams":
        """Fill every `None` from the checkpoint defaults, then validate."""
        sized = dataclasses.replace(
            self,
            height=d.height if self.height is None else self.height,
            width=d.width if self.width is None else self.width,
            num_frames=d.num_frames if self.num_frames is None else self.num_frames,
        )
        filled = dataclasses.replace(
            sized,
            negative_prompt=d.negative_prompt if self.negative_prompt is None else self.negative_prompt,
            # `is None`, not `or`: an explicit 0 must reach validate() as an error, not become the default
            num_inference_steps=d.num_inference_steps if self.num_inference_steps is None else self.num_inference_steps,
            guidance_scale=d.guidance_scale if self.guidance_scale is None else self.guidance_scale,
            shift=d.shift_for(sized.height, sized.width) if self.shift is None else self.shift,
            solver=d.solver if self.solver is None else self.solver,
            fps=d.fps if self.fps is None else self.fps,
        )
        if filled.guidance_scale_2 is None:
            g2 = d.guidance_scale_2 if self.guidance_scale is None else None
            filled = dataclasses.replace(filled, guidance_scale_2=filled.guidance_scale if g2 is None else g2)
        filled.validate()
        return filled

    def validate(self) -> None:
        """Family-independent checks, one line each, naming the field (the family checks the geometry,
        lightx2v.runtime.memory the trained range and memory). Limits: 0 <= guidance <= GUIDANCE_MAX,
        0 < shift <= SHIFT_MAX, 1 <= fps <= FPS_MAX, every number finite, latents a finite float tensor."""
        from lightx2v.schedulers import SOLVER_NAMES

        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("the prompt is empty; give a text describing the video", field="prompt")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v <= 0):
                raise InputError(f"{name} must be a positive integer (e.g. 480, 832), got {v!r}", field=name)
        if self.num_frames is not None and (not _is_int(self.num_frames) or self.num_frames < 1):
            raise InputError(f"num_frames must be a positive integer, got {self.num_frames!r}", field="num_frames")
        if self.num_inference_steps is not None and (not _is_int(self.num_inference_steps) or self.num_inference_steps < 1):
            raise InputError(f"num_inference_steps must be a positive integer, got {self.num_inference_steps!r}",
                             field="num_inference_steps")
        for name, low, high in (("guidance_scale", 0.0, GUIDANCE_MAX), ("guidance_scale_2", 0.0, GUIDANCE_MAX),
                                ("shift", None, SHIFT_MAX)):
            _check_number(name, getattr(self, name), low, high)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)
                                      or not -(2**63) <= self.seed < 2**64):
            raise InputError(f"seed must be an integer that fits in 64 bits, got {self.seed!r}", field="seed")
        if self.solver is not None and self.solver not in SOLVER_NAMES:
            raise InputError(f"unknown solver {self.solver!r}; expected one of {', '.join(SOLVER_NAMES)}", field="solver")
        if self.resize_mode not in RESIZE_MODES:
            raise InputError(f"unknown resize_mode {self.resize_mode!r}; expected one of {', '.join(RESIZE_MODES)}",
                             field="resize_mode")
        if self.last_image is not None and self.image is None:
            raise InputError("last_image needs image (the first frame) too", field="last_image")
        if self.output_type not in OUTPUT_TYPES:
            raise InputError(f"unknown output_type {self.output_type!r}; expected one of {', '.join(OUTPUT_TYPES)}",
                             field="output_type")
        if self.output_type in IMAGE_OUTPUT_TYPES and self.num_frames is not None and self.num_frames != 1:
            raise InputError(f"output_type {self.output_type!r} is one image: num_frames must be 1, got {self.num_frames}",
                             field="num_frames")
        if not isinstance(self.overwrite, bool):
            raise InputError(f"overwrite must be true or false, got {self.overwrite!r}", field="overwrite")
        if self.fps is not None and (not _is_int(self.fps) or not 1 <= self.fps <= FPS_MAX):
            raise InputError(f"fps must be an integer from 1 to {FPS_MAX}, got {self.fps!r}", field="fps")
        if self.crf is not None and (not _is_int(self.crf) or not 0 <= self.crf <= 51):
            raise InputError(f"crf must be an integer from 0 (best, largest) to 51, got {self.crf!r}", field="crf")
        if self.latents is not None:
            _check_latents(self.latents)
        if self.output_path is not None and self.output_type in FILE_OUTPUT_TYPES:
            # the file's extension decides its format; it must agree with output_type, unless that
            # is the default "mp4" (see lightx2v.io.output: folders, /dev/null, FIFOs, overwrite)
            from lightx2v.io.output import check_output

            check_output(self.output_path, self.num_frames, self.overwrite, self.output_type)

    def to_dict(self) -> dict:
        """A JSON-serializable dict (`from_dict` reads it back); `callback` is left out."""
        from lightx2v.io.serialize import image_to_json, tensor_to_json

        out = {}
        for f in dataclasses.fields(self):
            if f.name == "callback":
                continue
            v = getattr(self, f.name)
            if f.name in ("image", "last_image"):
                v = image_to_json(v)
            elif f.name == "latents":
                v = tensor_to_json(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SamplingParams":
        """The request `to_dict` wrote (images come back as paths or bytes; unknown keys are an error)."""
        from lightx2v.io.serialize import image_from_json, tensor_from_json

        if not isinstance(data, Mapping):
            raise InputError(f"a request must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - {"callback"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown request field(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
        if "prompt" not in data:
            raise InputError("a request needs a prompt")
        kw = dict(data)
        for name in ("image", "last_image"):
            if name in kw:
                kw[name] = image_from_json(kw[name], name)
        if "latents" in kw:
            kw["latents"] = tensor_from_json(kw["latents"])
        return cls(**kw)


def _check_number(name: str, v, low: Optional[float], high: float) -> None:
    """None, or a finite real in [low, high] (low None: > 0); a one-line InputError naming `name`."""
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise InputError(f"{name} must be a number, got {v!r}", field=name)
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise InputError(f"{name} must be a finite number, got {v!r}", field=name)
    if (v <= 0 if low is None else v < low) or v > high:
        span = f"> 0 and at most {high:g}" if low is None else f">= {low:g} and at most {high:g}"
        raise InputError(f"{name} must be {span}, got {v!r}", field=name)


def _check_latents(latents) -> None:
    """Given initial noise: a float tensor with no NaN or infinity (its shape is the pipeline's check)."""
    if not isinstance(latents, torch.Tensor):
        raise InputError(f"latents must be a torch.Tensor, got {type(latents).__name__}", field="latents")
    if not latents.is_floating_point():
        raise InputError(f"latents must be a floating-point tensor (float32), got {latents.dtype}", field="latents")
    if not bool(torch.isfinite(latents).all()):
        bad = int((~torch.isfinite(latents)).sum())
        raise InputError(f"latents hold {bad} NaN or infinite value(s) of {latents.numel()}; expected finite "
                         "noise (e.g. torch.randn)", field="latents")


def _is_int(v) -> bool:
    """A whole number (numpy's too), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)

