"""Wan2.1 checkpoints on disk: recognising the two layouts and reading their configs (no weights).

official (Wan-AI releases)          diffusers (Wan-AI/*-Diffusers)
  config.json  (_class_name WanModel)  model_index.json (_class_name WanPipeline / WanImageToVideoPipeline)
  diffusion_pytorch_model*.safetensors transformer/  config.json + diffusion_pytorch_model*.safetensors
  models_t5_umt5-xxl-enc-bf16.pth      text_encoder/ config.json + model*.safetensors
  google/umt5-xxl/  (tokenizer)        tokenizer/
  Wan2.1_VAE.pth                       vae/          config.json + diffusion_pytorch_model*.safetensors
  (i2v/flf2v) models_clip_...-14.pth   scheduler/    scheduler_config.json
                                       (i2v) image_encoder/, image_processor/

`recognise` only looks at names (a Reason when the folder is not Wan2.1, naming what it holds
that Wan2.1 does not use: a second expert, the Wan2.2 VAE ...); `read_config` reads the config
files and tensor headers and returns the `ModelConfig`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from lightx2v.config import ModelConfig
from lightx2v.errors import CheckpointError
from lightx2v.loading.state_dict import index_shards
from lightx2v.models.registry import Reason

OFFICIAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_VAE = "Wan2.1_VAE.pth"
OFFICIAL_TOKENIZER = "google/umt5-xxl"
OFFICIAL_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
DIT_STEM = "diffusion_pytorch_model"

# model_index.json _class_name -> task
DIFFUSERS_PIPELINES = {"WanPipeline": "t2v", "WanImageToVideoPipeline": "i2v"}
DIFFUSERS_PARTS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler", "image_encoder", "image_processor")
SUPPORTED_TASKS = ("t2v", "i2v", "flf2v")

# what other Wan releases hold that Wan2.1 does not use, so that they are refused by name
_OFFICIAL_FOREIGN = {
    "high_noise_model": "high_noise_model/ (a Wan2.2 A14B high-noise expert)",
    "low_noise_model": "low_noise_model/ (a Wan2.2 A14B low-noise expert)",
    "Wan2.2_VAE.pth": "Wan2.2_VAE.pth (the Wan2.2 VAE)",
}


@dataclass(frozen=True)
class WanArch:
    """The architecture configs of one Wan2.1 checkpoint (what `ModelConfig.arch` holds)."""

    dit: Any                                  # WanDiTConfig
    vae: Any                                  # WanVAEConfig
    text_encoder: Any                         # UMT5Config
    clip: Any = None                          # CLIPVisionConfig (i2v / flf2v)
    image_processor: Optional[Mapping] = None  # diffusers layout: image_processor/preprocessor_config.json


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} as JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return value


def find_weights(folder: Path, stem: str, what: str, layout: str) -> list[Path]:
    """The weight files of one component: a single file, or the shards of an index."""
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        return index_shards(index, what)
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    shards = sorted(folder.glob(f"{stem}-*-of-*.safetensors"))
    if shards:
        return shards
    raise CheckpointError(
        f"{what} weights not found: expected {folder / (stem + '.safetensors')} "
        f"(or shards with {stem}.safetensors.index.json) in the {layout} layout"
    )


def _require(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise CheckpointError(f"{what} not found: expected {path} in the {layout} layout")
    return path


def _check_task(task: str, where: Path) -> str:
    if task not in SUPPORTED_TASKS:
        raise CheckpointError(f"{where} is a Wan {task} checkpoint; Wan2.1 runs {', '.join(SUPPORTED_TASKS)} only")
    return task


# ---------------------------------------------------------------- recognising


def entry_is_set(value: Any) -> bool:
    """A model_index.json entry that says something: not null / false / [null, null] (what
    diffusers writes for an optional component or option left out)."""
    return not (value is None or value is False or (isinstance(value, list) and all(v is None for v in value)))


def _unused_entries(index: Mapping[str, Any]) -> list[str]:
    """model_index.json entries Wan2.1 does not use that are set (transformer_2, boundary_ratio ...)."""
    out = []
    for k, v in index.items():
        if k.startswith("_") or k in DIFFUSERS_PARTS:
            continue
        if entry_is_set(v):
            out.append(f"{k}={json.dumps(v)}")
    return out


def recognise(root: Path) -> "str | Reason":
    """'official' or 'diffusers' when `root` is a Wan2.1 folder, else why not."""
    if (root / "model_index.json").is_file():
        index = read_json(root / "model_index.json")
        cls = index.get("_class_name", "?")
        if cls not in DIFFUSERS_PIPELINES:
            return Reason(f"model_index.json names {cls}, not {' or '.join(DIFFUSERS_PIPELINES)}")
        unused = _unused_entries(index)
        if unused:
            return Reason(f"its model_index.json sets {', '.join(unused)}, which Wan2.1 does not use "
                          "(a Wan2.2 two-expert or TI2V pipeline)")
        return "diffusers"
    if (root / "config.json").is_file():
        cfg = read_json(root / "config.json")
        cls = cfg.get("_class_name")
        if cls not in (None, "WanModel") or "dim" not in cfg:
            return Reason(f"config.json is {'a ' + cls if cls else 'not a Wan DiT config'} (expected _class_name "
                          "WanModel with dim, num_heads, ...)")
        foreign = [what for name, what in _OFFICIAL_FOREIGN.items() if (root / name).exists()]
        if cfg.get("model_type") == "ti2v":
            foreign.insert(0, "a config.json of model_type ti2v (Wan2.2 TI2V-5B)")
        if foreign:
            return Reason(f"it holds {', '.join(foreign)}, which Wan2.1 does not use")
        return "official"
    foreign = [what for name, what in _OFFICIAL_FOREIGN.items() if (root / name).exists()]
    if foreign:
        return Reason(f"it holds {', '.join(foreign)}, which Wan2.1 does not use")
    return Reason(f"neither an official folder (config.json, {DIT_STEM}*.safetensors, {OFFICIAL_T5}, "
                  f"{OFFICIAL_VAE}, {OFFICIAL_TOKENIZER}/) nor a diffusers folder (model_index.json, "
                  "transformer/, text_encoder/, tokenizer/, vae/, scheduler/)")


# ---------------------------------------------------------------- reading configs


def read_official(root: Path) -> ModelConfig:
    from lightx2v.loading.dit_files import inspect_dit_source
    from lightx2v.models.wan.infer import t5_config_from_state_dict, vae_config_from_state_dict
    from lightx2v.loading.state_dict import read_tensors, rename
    from lightx2v.models.wan.dit import WanDiTConfig
    from lightx2v.models.wan.presets import official_defaults

    cfg = read_json(root / "config.json")
    files = {
        "dit": tuple(str(p) for p in find_weights(root, DIT_STEM, "DiT", "official")),
        "text_encoder": str(_require(root / OFFICIAL_T5, "text encoder", "official")),
        "tokenizer": str(_require(root / OFFICIAL_TOKENIZER, "tokenizer folder", "official")),
        "vae": str(_require(root / OFFICIAL_VAE, "VAE", "official")),
    }
    # fields the official config.json omits (text_dim, in_dim ...) come from the DiT's tensor shapes
    if "model_type" in cfg:
        _check_task(cfg["model_type"], root)
    shapes = inspect_dit_source(root).shapes
    dit = WanDiTConfig.from_official(cfg, shapes=shapes)
    task = _check_task(dit.model_type, root)
    # The official layout ships no config for these: their sizes are read off the tensors (mmap).
    t5 = t5_config_from_state_dict(read_tensors(files["text_encoder"]), OFFICIAL_T5)
    vae = vae_config_from_state_dict(read_tensors(files["vae"]), OFFICIAL_VAE)
    clip = None
    if task != "t2v":
        from lightx2v.models.wan.clip import CLIPVisionConfig, clip_key_from_official

        files["clip"] = str(_require(root / OFFICIAL_CLIP, "CLIP image encoder", "official"))
        clip = CLIPVisionConfig.from_state_dict(rename(read_tensors(files["clip"]), clip_key_from_official))
        dit = dit.with_image_encoder(clip)  # its width must be image_dim; its tokens per image
    return ModelConfig(family="wan2.1", task=task, layout="official", root=root, files=files,
                       arch=WanArch(dit=dit, vae=vae, text_encoder=t5, clip=clip),
                       defaults=official_defaults(task, dit))


def read_diffusers(root: Path) -> ModelConfig:
    from lightx2v.models.wan.dit import WanDiTConfig
    from lightx2v.models.wan.presets import diffusers_defaults
    from lightx2v.models.wan.t5 import UMT5Config
    from lightx2v.models.wan.vae import WanVAEConfig

    index = read_json(root / "model_index.json")
    parts = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")
    if DIFFUSERS_PIPELINES[index["_class_name"]] != "t2v":
        parts += ("image_encoder", "image_processor")
    sub = {name: _require(root / name, f"{name}/ folder", "diffusers") for name in parts}

    def config(part: str, name: str, what: str) -> dict:
        return read_json(_require(sub[part] / name, what, "diffusers"))

    dit = WanDiTConfig.from_diffusers(config("transformer", "config.json", "transformer config"))
    task = _check_task(dit.model_type, root)  # i2v vs flf2v: the transformer config tells
    t5 = UMT5Config.from_transformers(config("text_encoder", "config.json", "text encoder config"))
    vae = WanVAEConfig.from_diffusers(config("vae", "config.json", "VAE config"))
    sched = config("scheduler", "scheduler_config.json", "scheduler config")
    files = {
        "dit": tuple(str(p) for p in find_weights(sub["transformer"], DIT_STEM, "transformer", "diffusers")),
        "text_encoder": tuple(str(p) for p in find_weights(sub["text_encoder"], "model", "text encoder", "diffusers")),
        "tokenizer": str(sub["tokenizer"]),
        "vae": tuple(str(p) for p in find_weights(sub["vae"], DIT_STEM, "VAE", "diffusers")),
        "scheduler_config": str(sub["scheduler"] / "scheduler_config.json"),
    }
    clip = processor = None
    if task != "t2v":
        from lightx2v.models.wan.clip import CLIPVisionConfig

        clip = CLIPVisionConfig.from_transformers(config("image_encoder", "config.json", "image encoder config"))
        files["clip"] = tuple(str(p) for p in find_weights(sub["image_encoder"], "model", "image encoder", "diffusers"))
        processor = config("image_processor", "preprocessor_config.json", "image processor config")
        dit = dit.with_image_encoder(clip)
    return ModelConfig(family="wan2.1", task=task, layout="diffusers", root=root, files=files,
                       arch=WanArch(dit=dit, vae=vae, text_encoder=t5, clip=clip, image_processor=processor),
                       defaults=diffusers_defaults(task, dit, sched))


def read_config(root: Path, layout: str) -> ModelConfig:
    return read_official(root) if layout == "official" else read_diffusers(root)
