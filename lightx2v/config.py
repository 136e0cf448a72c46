"""Typed, frozen configuration in three layers (DESIGN principle 6).

- `ModelConfig`   what the checkpoint is: family, task, on-disk layout, component files and
                  architecture configs, and the sampling defaults that go with it.
- `EngineConfig`  how to run it: device, dtype, attention backend.
- `SamplingParams` one request: prompt, size, frames, steps, guidance, seed ...

Each is a frozen dataclass; `SamplingParams.validate()` turns bad input into one clear line.
Environment variables are never read here (only the CLI reads them).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lightx2v.errors import InputError

OUTPUT_TYPES = ("mp4", "np", "pt", "latent")
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
    """Per-checkpoint defaults, from its scheduler config or the model's preset."""

    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    shift: float = 5.0
    solver: str = "unipc"
    # "official": sigmas as wan/utils/fm_solvers*.py; "diffusers": as diffusers' schedulers.
    convention: str = "official"
    # The diffusers-layout scheduler_config.json, honoured as-is when present.
    scheduler_config: Optional[dict] = None
    negative_prompt: str = ""
    fps: int = 16
    # I2V: the official code uses shift 3.0 instead of `shift` at 480p sizes (area <= 832*480)
    shift_480p: Optional[float] = None
    # options of the default solver (the distill solver's step list)
    solver_options: Optional[dict] = None

    def shift_for(self, height: int, width: int) -> float:
        if self.shift_480p is not None and height * width <= 832 * 480:
            return self.shift_480p
        return self.shift


@dataclass(frozen=True)
class ModelConfig:
    """What was found on disk (see lightx2v.loading.detect)."""

    family: str                 # "wan2.1"
    task: str                   # "t2v"
    layout: str                 # "official" | "diffusers"
    root: Path
    files: dict                 # component -> path (str); see detect.py for the names
    dit: Any                    # WanDiTConfig
    vae: Any                    # WanVAEConfig
    text_encoder: Any           # UMT5Config
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    clip: Any = None            # CLIPVisionConfig for i2v / flf2v
    dit_source: Any = None      # DitSource when the DiT weights come from a file given by the user
    distill: Any = None         # DistillMatch when the checkpoint is step-distilled (why we think so)
    image_processor: Optional[dict] = None  # diffusers layout: image_processor/preprocessor_config.json


@dataclass(frozen=True)
class EngineConfig:
    """How to run: where, in which precision, with which attention kernel."""

    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    attention: str = "auto"
    quant: Optional[str] = None  # quantize the DiT's block linears at load: "w8a8-int8" | "w8a8-fp8"

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """'auto' | 'cuda[:i]' | 'cpu' -> torch.device, with a clear error when CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; expected 'cuda', 'cuda:N', 'cpu' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but CUDA is not available; use --device cpu (slow) or a GPU machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


@dataclass(frozen=True)
class SamplingParams:
    """One generation request. `None` fields take the checkpoint's defaults."""

    prompt: str
    negative_prompt: Optional[str] = None
    image: Any = None            # PIL image (already loaded) for i2v / flf2v
    last_image: Any = None       # PIL image for flf2v
    resize_mode: str = "area"
    height: int = 480
    width: int = 832
    num_frames: int = 81
    num_inference_steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    shift: Optional[float] = None
    solver: Optional[str] = None
    seed: Optional[int] = None
    latents: Optional[torch.Tensor] = None
    output_type: str = "mp4"
    output_path: Optional[str] = None
    fps: Optional[int] = None
    callback: Optional[Callable] = None

    def with_defaults(self, d: SamplingDefaults) -> "SamplingParams":
        """Fill every `None` from the checkpoint defaults, then validate."""
        filled = dataclasses.replace(
            self,
            negative_prompt=d.negative_prompt if self.negative_prompt is None else self.negative_prompt,
            # `is None`, not `or`: an explicit 0 must reach validate() as an error, not become the default
            num_inference_steps=d.num_inference_steps if self.num_inference_steps is None else self.num_inference_steps,
            guidance_scale=d.guidance_scale if self.guidance_scale is None else self.guidance_scale,
            shift=d.shift_for(self.height, self.width) if self.shift is None else self.shift,
            solver=d.solver if self.solver is None else self.solver,
            fps=d.fps if self.fps is None else self.fps,
        )
        filled.validate()
        return filled

    def validate(self) -> None:
        from lightx2v.schedulers import SOLVER_NAMES

        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("the prompt is empty; give a text describing the video")
        for name in ("height", "width"):
            v = getattr(self, name)
            if not _is_int(v) or v <= 0 or v % 16:
                raise InputError(f"{name} must be a positive multiple of 16 (e.g. 480, 832), got {v!r}")
        if not _is_int(self.num_frames) or self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise InputError(f"num_frames must be 4k+1 (1, 5, ..., 77, 81), got {self.num_frames!r}")
        if self.num_inference_steps is not None and (not _is_int(self.num_inference_steps) or self.num_inference_steps < 1):
            raise InputError(f"num_inference_steps must be a positive integer, got {self.num_inference_steps!r}")
        for name in ("guidance_scale", "shift"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                raise InputError(f"{name} must be a number, got {v!r}")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise InputError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.shift is not None and self.shift <= 0:
            raise InputError(f"shift must be > 0, got {self.shift}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)
                                      or not -(2**63) <= self.seed < 2**64):
            raise InputError(f"seed must be an integer that fits in 64 bits, got {self.seed!r}")
        if self.solver is not None and self.solver not in SOLVER_NAMES:
            raise InputError(f"unknown solver {self.solver!r}; expected one of {', '.join(SOLVER_NAMES)}")
        from lightx2v.pipelines.wan_image import RESIZE_MODES

        if self.resize_mode not in RESIZE_MODES:
            raise InputError(f"unknown resize_mode {self.resize_mode!r}; expected one of {', '.join(RESIZE_MODES)}")
        if self.last_image is not None and self.image is None:
            raise InputError("last_image needs image (the first frame) too")
        if self.output_type not in OUTPUT_TYPES:
            raise InputError(f"unknown output_type {self.output_type!r}; expected one of {', '.join(OUTPUT_TYPES)}")
        if self.fps is not None and (not _is_int(self.fps) or self.fps < 1):
            raise InputError(f"fps must be a positive integer, got {self.fps!r}")
        if self.output_path is not None and self.output_type == "mp4":
            check_writable(Path(self.output_path))

    def latent_shape(self, z_dim: int = 16, stride: tuple[int, int, int] = (4, 8, 8),
                     size: Optional[tuple[int, int]] = None) -> tuple[int, ...]:
        """diffusers' layout [1, C, T', H/8, W/8] (size: the (h, w) actually generated, if not height x width)."""
        h, w = size or (self.height, self.width)
        return (1, z_dim, (self.num_frames - 1) // stride[0] + 1, h // stride[1], w // stride[2])


def _is_int(v) -> bool:
    """A whole number (numpy's too), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_writable(path: Path) -> None:
    """The folder that will hold `path` exists (or can be made) and is writable."""
    import os

    if path.exists() and path.is_dir():
        raise InputError(f"output path {path} is a folder; expected a file name such as out.mp4")
    folder = path.parent  # Path("out.mp4").parent is Path(".")
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise InputError(f"output folder {folder} is not writable")
