"""Typed, frozen configuration in three layers (DESIGN principle 6).

- `ModelConfig`   what the checkpoint is: family, task, on-disk layout, component files and
                  architecture configs (the family's, typed there), and its sampling defaults.
- `EngineConfig`  how to run it: device, dtype, attention backend, and one typed sub-config
                  per engine transform (quant, LoRA, compile ...), applied by runtime/engine.py
                  (defined in lightx2v/engine_config.py, imported from here).
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

from lightx2v.engine_config import (  # noqa: F401 (re-exported: the engine layer lives there)
    ATTENTION_ROLES, DTYPES, OFFLOAD_GRANULARITIES, CompileConfig, EngineConfig, LoraConfig, OffloadConfig, ParallelConfig,
    QuantConfig, parse_attention, parse_dtype, resolve_device,
)
from lightx2v.errors import InputError

if TYPE_CHECKING:
    from lightx2v.loading.dit_files import DitSource

OUTPUT_TYPES = ("mp4", "webm", "gif", "png", "webp", "jpeg", "np", "pt", "pil", "latent")
# images: num_frames must be 1 ("pil": a list of PIL images in memory; the files: one per image)
IMAGE_OUTPUT_TYPES = ("png", "webp", "jpeg", "pil")
IMAGE_FILE_TYPES = ("png", "webp", "jpeg")
FILE_OUTPUT_TYPES = ("mp4", "webm", "gif") + IMAGE_FILE_TYPES  # written to output_path (lightx2v.io.output)
NUM_IMAGES_MAX = 16  # images per request (num_images): a batch through the DiT
# how a conditioning image is fitted to the frame (see lightx2v.pipelines.wan_image)
RESIZE_MODES = ("area", "crop", "pad")
# request limits (validate): CFG scales in use are 1 to ~20; released shifts 1 to 17; fps above
# 1000 is no video a player shows
GUIDANCE_MAX = 50.0
SHIFT_MAX = 100.0
FPS_MAX = 1000
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
    # a tiny VAE file given by the user (--tiny-vae), as its family records it (Wan2.1:
    # models.wan.taehv.TinyVAEFile, read by its "tiny_vae" component); None: the full VAE decodes
    tiny_vae: Optional[Any] = None

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
class SamplingParams:
    """One generation request. `None` fields take the checkpoint's defaults.

    It carries no family geometry: the family checks sizes and frames (its `Geometry`). An image
    request is `num_frames=1` with an image output type ("png", "webp", "jpeg", "pil", "np", "pt"), and
    `num_images` images per prompt (image families only: one batch, as diffusers' num_images_per_prompt).
    It round-trips through
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
    image: Any = None            # first frame (i2v / flf2v): PIL image, path, or encoded bytes; an edit
                                 # model's input image, or a list of them (Qwen-Image-Edit-2509/2511)
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
    # images per prompt (image families: Qwen-Image); None: 1. One batch through the DiT from one
    # seeded draw of [N, ...] noise, as diffusers' num_images_per_prompt (not N seeds)
    num_images: Optional[int] = None

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
            num_images=1 if self.num_images is None else self.num_images,
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
        if self.num_images is not None and (not _is_int(self.num_images) or not 1 <= self.num_images <= NUM_IMAGES_MAX):
            raise InputError(f"num_images must be an integer from 1 to {NUM_IMAGES_MAX}, got {self.num_images!r}",
                             field="num_images")
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

            check_output(self.output_path, self.num_frames, self.overwrite, self.output_type,
                         num_images=self.num_images or 1)

    def to_dict(self) -> dict:
        """A JSON-serializable dict (`from_dict` reads it back); `callback` is left out."""
        from lightx2v.io.serialize import image_to_json, tensor_to_json

        out = {}
        for f in dataclasses.fields(self):
            if f.name == "callback":
                continue
            v = getattr(self, f.name)
            if f.name in ("image", "last_image"):
                v = [image_to_json(i) for i in v] if isinstance(v, (list, tuple)) else image_to_json(v)
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
                v = kw[name]
                kw[name] = ([image_from_json(i, f"{name} {k + 1}") for k, i in enumerate(v)] if isinstance(v, list)
                            else image_from_json(v, name))
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

