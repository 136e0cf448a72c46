"""Qwen-Image-2.1 on disk: the diffusers-format folder of Qwen/Qwen-Image-2.1 (no weights read).

    model_index.json   _class_name QwenImage21Pipeline; `sample_sigmas` (a list) marks the Turbo
                       checkpoint (diffusers' modular map picks QwenImage21TurboModularPipeline by it)
    transformer/       config.json + diffusion_pytorch_model*.safetensors   (QwenImage21Transformer2DModel)
    text_encoder/      config.json + model*.safetensors                     (Qwen3VLForConditionalGeneration)
    processor/         Qwen3VLProcessor: the tokenizer's files (and the image processor's)
    vae/               config.json + diffusion_pytorch_model*.safetensors   (AutoencoderKLQwenImage21)
    scheduler/         scheduler_config.json                                (FlowMatchEulerDiscreteScheduler)

2.1 joins the qwen-image family (lightx2v.models.qwen_image.layouts dispatches here by the class
name): the same task name (t2i), the same schedule code, its own DiT, VAE and text encoder
(`QwenImage21Arch`). Defaults are the reference's: QwenImage21Pipeline's 40 steps, no guidance
(true_cfg_scale 1: "meant to be sampled without guidance"), 1024 x 1024 (output_resolution); the
Turbo checkpoint: the length of its grid (8 in the modular Turbo blocks' default), no guidance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lightx2v.config import ModelConfig, SamplingDefaults

PIPELINE_21 = "QwenImage21Pipeline"
PARTS_21 = ("transformer", "text_encoder", "processor", "vae", "scheduler")
STEM = "diffusion_pytorch_model"

DEFAULTS_21 = SamplingDefaults(num_inference_steps=40, guidance_scale=1.0, shift=1.0, solver="euler",
                               convention="diffusers", negative_prompt=" ", height=1024, width=1024, num_frames=1)


@dataclass(frozen=True)
class QwenImage21Arch:
    """The architecture configs of one Qwen-Image-2.1 checkpoint (`ModelConfig.arch`)."""

    dit: Any                                  # QwenImage21DiTConfig
    vae: Any                                  # VAE21Config
    text_encoder: Any                         # transformers' Qwen3VLConfig
    schedule: Any                             # QwenSchedule
    sample_sigmas: Optional[tuple[float, ...]] = None  # Turbo: the checkpoint's sigma grid
    edit: Any = None                          # (Qwen-Image's edit variant: none; 2.1 takes images on t2i)

    @property
    def turbo(self) -> bool:
        return self.sample_sigmas is not None


def read_config21(root: Path, index: dict) -> ModelConfig:
    from lightx2v.errors import CheckpointError
    from lightx2v.models.qwen_image.dit21 import QwenImage21DiTConfig
    from lightx2v.models.qwen_image.schedule import QwenSchedule
    from lightx2v.models.qwen_image.text21 import text21_config_from_file
    from lightx2v.models.qwen_image.vae21 import VAE21Config
    from lightx2v.models.wan.layouts import _require, find_weights, read_json

    sub = {name: _require(root / name, f"{name}/ folder", "diffusers") for name in PARTS_21}

    def config(part: str, name: str = "config.json") -> dict:
        return read_json(_require(sub[part] / name, f"{part} config", "diffusers"))

    grid = index.get("sample_sigmas")
    if grid is not None and (not isinstance(grid, list) or not grid or not all(isinstance(v, (int, float)) for v in grid)):
        raise CheckpointError(f"{root / 'model_index.json'}: sample_sigmas must be a list of numbers, got {grid!r}")
    arch = QwenImage21Arch(
        dit=QwenImage21DiTConfig.from_diffusers(config("transformer")),
        vae=VAE21Config.from_diffusers(config("vae")),
        text_encoder=text21_config_from_file(sub["text_encoder"]),
        schedule=QwenSchedule.from_diffusers(config("scheduler", "scheduler_config.json")),
        sample_sigmas=tuple(float(v) for v in grid) if grid else None,
    )
    if arch.dit.in_channels != arch.vae.z_dim:
        raise CheckpointError(f"transformer/ takes {arch.dit.in_channels} latent channels, vae/ makes {arch.vae.z_dim}")
    files = {
        "dit": tuple(str(p) for p in find_weights(sub["transformer"], STEM, "transformer", "diffusers")),
        "text_encoder": tuple(str(p) for p in find_weights(sub["text_encoder"], "model", "text encoder", "diffusers")),
        "tokenizer": str(sub["processor"]),
        "vae": tuple(str(p) for p in find_weights(sub["vae"], STEM, "VAE", "diffusers")),
        "scheduler_config": str(sub["scheduler"] / "scheduler_config.json"),
    }
    defaults = DEFAULTS_21
    if arch.turbo:
        defaults = dataclasses.replace(DEFAULTS_21, num_inference_steps=len(arch.sample_sigmas))
    return ModelConfig(family="qwen-image", task="t2i", layout="diffusers", root=root, files=files, arch=arch,
                       defaults=defaults)
