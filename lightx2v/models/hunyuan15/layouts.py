"""HunyuanVideo-1.5 checkpoints on disk: the diffusers-format folder (no weights read here).

    model_index.json   _class_name HunyuanVideo15Pipeline (t2v) or HunyuanVideo15ImageToVideoPipeline (i2v)
    transformer/       config.json + diffusion_pytorch_model*.safetensors  (HunyuanVideo15Transformer3DModel)
    vae/               config.json + diffusion_pytorch_model*.safetensors  (AutoencoderKLHunyuanVideo15)
    text_encoder/      config.json + model*.safetensors                    (Qwen2.5-VL-7B's language model:
                                                                            Qwen2_5_VLTextModel, bare keys)
    tokenizer/         the Qwen2.5-VL tokenizer (its chat template renders the prompt template)
    text_encoder_2/    config.json + model*.safetensors                    (byT5 T5EncoderModel, Glyph-SDXL-v2)
    tokenizer_2/       ByT5Tokenizer files (the glyph colour / font tokens added)
    scheduler/         scheduler_config.json                               (FlowMatchEulerDiscreteScheduler: shift)
    guider/            guider_config.json                                  (ClassifierFreeGuidance: guidance_scale)
    image_encoder/     config.json + model*.safetensors                    (i2v only: SiglipVisionModel)
    feature_extractor/ preprocessor_config.json                            (i2v only: SiglipImageProcessor)

Design: `recognise` looks at model_index.json only (its `_class_name` gives the task); `read_config` reads the config files into a `ModelConfig` whose defaults are the reference's:
50 steps, the scheduler's shift (480p 5, 720p 9), the guider's scale (6; 1 for the CFG-distilled
releases, whose guider says 1), 121 frames at 24 fps, and the size diffusers picks when none is given
(the 16:9 bucket of the transformer's `target_size`: 480 x 848 for 640, 720 x 1280 for 960). For
image-to-video the size follows the image instead (the bucket closest to its aspect ratio,
`default_size(target, (ih, iw))`, as diffusers' HunyuanVideo15ImageToVideoPipeline picks it); the
16:9 default then only applies to a request that names neither side and gives no image (refused).

The official tencent/HunyuanVideo-1.5 release folder (transformer/<variant>/, text_encoder/llm ...) is
the other layout: models/hunyuan15/official.py (`recognise` tries it when there is no model_index.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lightx2v.config import ModelConfig, SamplingDefaults
from lightx2v.errors import CheckpointError
from lightx2v.models.registry import Reason

PIPELINES = {"HunyuanVideo15Pipeline": "t2v", "HunyuanVideo15ImageToVideoPipeline": "i2v"}
PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
I2V_PARTS = ("image_encoder", "feature_extractor")  # the SigLIP encoder and its image processor
SUPPORTED_TASKS = ("t2v", "i2v")
STEM = "diffusion_pytorch_model"
FPS = 24            # the reference writes its videos at 24 fps
NUM_FRAMES = 121    # diffusers' and the official default
STEPS = 50          # diffusers' HunyuanVideo15Pipeline default
ASPECT = (9, 16)    # diffusers' default_aspect_ratio (height, width) when no size is given
DEFAULT_TARGET_SIZE = 640


@dataclass(frozen=True)
class Hunyuan15Arch:
    """The architecture configs of one HunyuanVideo-1.5 checkpoint (what `ModelConfig.arch` holds)."""

    dit: Any              # HunyuanVideo15DiTConfig
    vae: Any              # HunyuanVideo15VAEConfig
    text_encoder: Any     # transformers' Qwen2_5_VLTextConfig
    text_encoder_2: Any   # transformers' T5Config (byT5)
    guidance_rescale: float = 0.0  # the guider's rescale phi (0: plain CFG)
    image_encoder: Any = None      # transformers' SiglipVisionConfig (i2v), None for t2v
    target_size: int = DEFAULT_TARGET_SIZE  # the transformer's size bucket base (the I2V size follows it)


def recognise(root: Path) -> "str | Reason":
    from lightx2v.models.wan.layouts import read_json

    if not (root / "model_index.json").is_file():
        from lightx2v.models.hunyuan15 import official

        got = official.recognise(root)
        if isinstance(got, str):
            return got
        return Reason(f"no model_index.json of a HunyuanVideo15Pipeline (the diffusers layout), and {got.text}")
    cls = read_json(root / "model_index.json").get("_class_name", "?")
    if cls not in PIPELINES:
        return Reason(f"model_index.json names {cls}, not HunyuanVideo15Pipeline or HunyuanVideo15ImageToVideoPipeline")
    return "diffusers"


def size_buckets(target_size: int, patch: int = 16, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """The reference's resolution buckets for a target size (hyvideo/utils/data_utils.py
    `generate_crop_size_list`): every (a, b) in patches of `patch` pixels with about (target/patch)^2
    patches, walking a down from all patches in one row while the aspect stays within max_ratio."""
    total = round((target_size / patch) ** 2)
    out, a, b = [], total, 1
    while a > 0:
        if max(a, b) / min(a, b) <= max_ratio:
            out.append((a * patch, b * patch))
        if (b + 1) * a <= total:
            b += 1
        else:
            a -= 1
    return out


def default_size(target_size: int, aspect: tuple[int, int] = ASPECT) -> tuple[int, int]:
    """(height, width) the reference generates when given no size: the bucket whose ratio is closest
    to height / width on the same side of 1 (diffusers' `calculate_default_height_width`)."""
    want = aspect[0] / aspect[1]
    buckets = size_buckets(target_size)
    ratios = [round(h / w, 5) for h, w in buckets]
    same_side = [i for i, r in enumerate(ratios) if (r - want <= 0 if want >= 1 else r - want >= 0)]
    best = min(same_side, key=lambda i: abs(ratios[i] - want))
    return buckets[best]


def read_guider(cfg: Mapping[str, Any], where: str = "guider/guider_config.json") -> tuple[float, float]:
    """(guidance_scale, guidance_rescale) of a ClassifierFreeGuidance config; what the loop cannot do
    as diffusers does is refused by name."""
    if cfg.get("_class_name", "ClassifierFreeGuidance") != "ClassifierFreeGuidance":
        raise CheckpointError(f"{where}: guider {cfg.get('_class_name')!r} is not supported; expected "
                              "ClassifierFreeGuidance")
    if cfg.get("use_original_formulation", False):
        raise CheckpointError(f"{where}: use_original_formulation = true is not supported (expected false)")
    if float(cfg.get("start", 0.0)) != 0.0 or float(cfg.get("stop", 1.0)) != 1.0:
        raise CheckpointError(f"{where}: guidance on part of the schedule (start {cfg.get('start')}, stop "
                              f"{cfg.get('stop')}) is not supported; expected start 0, stop 1")
    scale = float(cfg.get("guidance_scale", 7.5)) if cfg.get("enabled", True) else 1.0
    return scale, float(cfg.get("guidance_rescale", 0.0))


def read_config(root: Path, layout: str = "diffusers") -> ModelConfig:
    if layout == "official":
        from lightx2v.models.hunyuan15.official import read_config as read_official

        return read_official(root)
    from lightx2v.models.hunyuan15.dit_config import HunyuanVideo15DiTConfig
    from lightx2v.models.hunyuan15.encoders import (byt5_config_from_file, llm_config_from_file,
                                                    siglip_config_from_file)
    from lightx2v.models.hunyuan15.schedule import read_scheduler
    from lightx2v.models.hunyuan15.vae_config import HunyuanVideo15VAEConfig
    from lightx2v.models.wan.layouts import _require, find_weights, read_json

    task = PIPELINES.get(read_json(root / "model_index.json").get("_class_name"), "t2v")
    sub = {name: _require(root / name, f"{name}/ folder", "diffusers")
           for name in PARTS + (I2V_PARTS if task == "i2v" else ())}

    def config(part: str, name: str = "config.json") -> dict:
        return read_json(_require(sub[part] / name, f"{part} config", "diffusers"))

    dit_raw = config("transformer")
    shift, steps_cfg = read_scheduler(config("scheduler", "scheduler_config.json"))
    guider = root / "guider" / "guider_config.json"
    # no guider/: diffusers' pipeline then has no guider; its ClassifierFreeGuidance default is 7.5
    scale, rescale = read_guider(read_json(guider) if guider.is_file() else {}, str(guider))
    target = int(dit_raw.get("target_size", DEFAULT_TARGET_SIZE))
    arch = Hunyuan15Arch(
        dit=HunyuanVideo15DiTConfig.from_diffusers(dit_raw, where=str(sub["transformer"] / "config.json")),
        vae=HunyuanVideo15VAEConfig.from_diffusers(config("vae")),
        text_encoder=llm_config_from_file(sub["text_encoder"]),
        text_encoder_2=byt5_config_from_file(sub["text_encoder_2"]),
        guidance_rescale=rescale,
        image_encoder=siglip_config_from_file(sub["image_encoder"]) if task == "i2v" else None,
        target_size=target,
    )
    height, width = default_size(target)
    defaults = SamplingDefaults(num_inference_steps=STEPS, guidance_scale=scale, shift=shift, solver="euler",
                                convention="diffusers", scheduler_config=steps_cfg, negative_prompt="", fps=FPS,
                                height=height, width=width, num_frames=NUM_FRAMES)
    files = {
        "dit": tuple(str(p) for p in find_weights(sub["transformer"], STEM, "transformer", "diffusers")),
        "vae": tuple(str(p) for p in find_weights(sub["vae"], STEM, "VAE", "diffusers")),
        "text_encoder": tuple(str(p) for p in find_weights(sub["text_encoder"], "model", "text encoder", "diffusers")),
        "text_encoder_2": tuple(str(p) for p in find_weights(sub["text_encoder_2"], "model", "byT5 encoder",
                                                             "diffusers")),
        "tokenizer": str(sub["tokenizer"]),
        "tokenizer_2": str(sub["tokenizer_2"]),
        "scheduler_config": str(sub["scheduler"] / "scheduler_config.json"),
    }
    if task == "i2v":
        files["image_encoder"] = tuple(str(p) for p in find_weights(sub["image_encoder"], "model", "image encoder",
                                                                    "diffusers"))
        files["feature_extractor"] = str(sub["feature_extractor"])
    return ModelConfig(family="hunyuanvideo-1.5", task=task, layout="diffusers", root=root, files=files, arch=arch,
                       defaults=defaults)
