"""Qwen-Image checkpoints on disk: the diffusers-format folder the releases ship (no weights read).

    model_index.json   _class_name QwenImagePipeline (t2i), QwenImageEditPipeline (edit: Qwen-Image-Edit)
                       or QwenImageEditPlusPipeline (edit: Qwen-Image-Edit-2509 / -2511, several images)
    transformer/       config.json + diffusion_pytorch_model*.safetensors   (QwenImageTransformer2DModel)
    text_encoder/      config.json + model*.safetensors                     (Qwen2_5_VLForConditionalGeneration)
    tokenizer/         Qwen2Tokenizer files
    processor/         (edit) Qwen2VLProcessor: preprocessor_config.json + the tokenizer's files
    vae/               config.json + diffusion_pytorch_model*.safetensors   (AutoencoderKLQwenImage)
    scheduler/         scheduler_config.json                                (FlowMatchEulerDiscreteScheduler)

`recognise` looks at names only; `read_config` reads the config files into a `ModelConfig` (the task
and, for edit, the variant from model_index.json's `_class_name`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightx2v.config import ModelConfig, SamplingDefaults
from lightx2v.models.registry import Reason

PIPELINES = {"QwenImagePipeline": "t2i", "QwenImageEditPipeline": "edit", "QwenImageEditPlusPipeline": "edit",
             "QwenImage21Pipeline": "t2i"}  # 2.1: its own DiT, VAE and text encoder (layouts21.py)
# the edit variant of each edit pipeline (lightx2v.pipelines.qwen_image_edit.VARIANTS)
EDIT_VARIANTS = {"QwenImageEditPipeline": "edit", "QwenImageEditPlusPipeline": "edit-plus"}
PARTS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")
SUPPORTED_TASKS = ("t2i", "edit")
STEM = "diffusion_pytorch_model"

# The model card's defaults: 50 steps, true_cfg_scale 4 with a " " negative prompt.
DEFAULTS = SamplingDefaults(num_inference_steps=50, guidance_scale=4.0, shift=1.0, solver="euler",
                            convention="diffusers", negative_prompt=" ", height=1328, width=1328, num_frames=1)
# The edit model cards: Qwen-Image-Edit 50 steps, -2509 / -2511 40 steps; true_cfg_scale 4, " " negative.
# The output size follows the (last) input image (pipelines/qwen_image_edit.py); 1024 x 1024 is only
# what a size-less form shows.
EDIT_DEFAULTS = {
    "edit": dataclasses.replace(DEFAULTS, height=1024, width=1024),
    "edit-plus": dataclasses.replace(DEFAULTS, num_inference_steps=40, height=1024, width=1024),
}


@dataclass(frozen=True)
class QwenImageArch:
    """The architecture configs of one Qwen-Image checkpoint (what `ModelConfig.arch` holds)."""

    dit: Any             # QwenImageDiTConfig
    vae: Any             # WanVAEConfig (the Qwen-Image VAE is the Wan2.1 network)
    text_encoder: Any    # transformers' Qwen2_5_VLConfig
    schedule: Any        # QwenSchedule
    edit: Any = None     # None (t2i), or the edit variant: "edit" (one image) | "edit-plus" (several)


def recognise(root: Path) -> "str | Reason":
    from lightx2v.models.wan.layouts import read_json

    if not (root / "model_index.json").is_file():
        return Reason("no model_index.json of a QwenImagePipeline (Qwen-Image ships the diffusers layout only)")
    cls = read_json(root / "model_index.json").get("_class_name", "?")
    if cls not in PIPELINES:
        return Reason(f"model_index.json names {cls}, not one of {', '.join(PIPELINES)}")
    return "diffusers"


def read_config(root: Path, layout: str = "diffusers") -> ModelConfig:
    from lightx2v.models.qwen_image.dit_config import QwenImageDiTConfig
    from lightx2v.models.qwen_image.schedule import QwenSchedule
    from lightx2v.models.qwen_image.text import text_config_from_file
    from lightx2v.models.qwen_image.vae import config_from_diffusers
    from lightx2v.models.wan.layouts import _require, find_weights, read_json

    index = read_json(root / "model_index.json")
    cls = index.get("_class_name")
    # -- qwen-image 2.1 --
    if cls == "QwenImage21Pipeline":
        from lightx2v.models.qwen_image.layouts21 import read_config21

        return read_config21(root, index)
    edit = EDIT_VARIANTS.get(cls)
    parts = PARTS + (("processor",) if edit else ())
    sub = {name: _require(root / name, f"{name}/ folder", "diffusers") for name in parts}

    def config(part: str, name: str = "config.json") -> dict:
        return read_json(_require(sub[part] / name, f"{part} config", "diffusers"))

    arch = QwenImageArch(
        dit=QwenImageDiTConfig.from_diffusers(config("transformer")),
        vae=config_from_diffusers(config("vae")),
        text_encoder=text_config_from_file(sub["text_encoder"]),
        schedule=QwenSchedule.from_diffusers(config("scheduler", "scheduler_config.json")),
        edit=edit,
    )
    files = {
        "dit": tuple(str(p) for p in find_weights(sub["transformer"], STEM, "transformer", "diffusers")),
        "text_encoder": tuple(str(p) for p in find_weights(sub["text_encoder"], "model", "text encoder", "diffusers")),
        "tokenizer": str(sub["tokenizer"]),
        "vae": tuple(str(p) for p in find_weights(sub["vae"], STEM, "VAE", "diffusers")),
        "scheduler_config": str(sub["scheduler"] / "scheduler_config.json"),
    }
    if edit:
        # the image processor and the tokenizer the edit pipelines tokenize with (diffusers' `processor`)
        _require(sub["processor"] / "preprocessor_config.json", "processor config", "diffusers")
        files["processor"] = str(sub["processor"])
    return ModelConfig(family="qwen-image", task="edit" if edit else "t2i", layout="diffusers", root=root,
                       files=files, arch=arch, defaults=EDIT_DEFAULTS[edit] if edit else DEFAULTS)
