"""Find out what a model folder is, without reading any weights.

Two layouts are recognised (docs/formats.md lists every file name):

official (Wan-AI releases)          diffusers (Wan-AI/*-Diffusers)
  config.json  (_class_name WanModel)  model_index.json (_class_name WanPipeline)
  diffusion_pytorch_model*.safetensors transformer/  config.json + diffusion_pytorch_model*.safetensors
  models_t5_umt5-xxl-enc-bf16.pth      text_encoder/ config.json + model*.safetensors
  google/umt5-xxl/  (tokenizer)        tokenizer/
  Wan2.1_VAE.pth                       vae/          config.json + diffusion_pytorch_model*.safetensors
                                       scheduler/    scheduler_config.json

The result is a `ModelConfig`: the family/task, the component files, the architecture configs
read from the checkpoint's own config files, and the sampling defaults (the checkpoint's scheduler
config where it has one, else the preset of that model).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

from lightx2v.config import ModelConfig
from lightx2v.errors import CheckpointError
from lightx2v.loading.state_dict import index_shards
from lightx2v.models.wan.presets import official_defaults, diffusers_defaults

OFFICIAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_VAE = "Wan2.1_VAE.pth"
OFFICIAL_TOKENIZER = "google/umt5-xxl"
OFFICIAL_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
DIT_STEM = "diffusion_pytorch_model"

# model_index.json _class_name -> task
DIFFUSERS_PIPELINES = {"WanPipeline": "t2v", "WanImageToVideoPipeline": "i2v"}
SUPPORTED_TASKS = ("t2v", "i2v", "flf2v")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} as JSON ({exc})") from None


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
        raise CheckpointError(
            f"{where} is a Wan2.1 {task} checkpoint; this version runs {', '.join(SUPPORTED_TASKS)} only"
        )
    return task


def detect_official(root: Path) -> ModelConfig:
    from lightx2v.loading.infer import t5_config_from_state_dict, vae_config_from_state_dict
    from lightx2v.loading.state_dict import read_tensors
    from lightx2v.models.wan.dit import WanDiTConfig

    cfg = _read_json(root / "config.json")
    dit = WanDiTConfig.from_official(cfg)
    task = _check_task(cfg.get("model_type", "t2v"), root)
    files = {
        "dit": [str(p) for p in find_weights(root, DIT_STEM, "DiT", "official")],
        "text_encoder": str(_require(root / OFFICIAL_T5, "text encoder", "official")),
        "tokenizer": str(_require(root / OFFICIAL_TOKENIZER, "tokenizer folder", "official")),
        "vae": str(_require(root / OFFICIAL_VAE, "VAE", "official")),
    }
    # The official layout ships no config for these: their sizes are read off the tensors (mmap).
    t5 = t5_config_from_state_dict(read_tensors(files["text_encoder"]), OFFICIAL_T5)
    vae = vae_config_from_state_dict(read_tensors(files["vae"]), OFFICIAL_VAE)
    clip = None
    if task != "t2v":
        files["clip"] = str(_require(root / OFFICIAL_CLIP, "CLIP image encoder", "official"))
        from lightx2v.loading.state_dict import rename
        from lightx2v.models.wan.clip import CLIPVisionConfig, clip_key_from_official

        clip = CLIPVisionConfig.from_state_dict(rename(read_tensors(files["clip"]), clip_key_from_official))
    return ModelConfig(
        family="wan2.1", task=task, layout="official", root=root, files=files,
        dit=dit, vae=vae, text_encoder=t5, defaults=official_defaults(task, dit), clip=clip,
    )


def detect_diffusers(root: Path) -> ModelConfig:
    from lightx2v.models.wan.dit import WanDiTConfig
    from lightx2v.models.wan.t5 import UMT5Config
    from lightx2v.models.wan.vae import WanVAEConfig

    index = _read_json(root / "model_index.json")
    cls = index.get("_class_name", "?")
    if cls not in DIFFUSERS_PIPELINES:
        raise CheckpointError(
            f"{root} is a diffusers {cls} folder; expected one of {', '.join(DIFFUSERS_PIPELINES)}"
        )
    parts = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")
    if DIFFUSERS_PIPELINES[cls] != "t2v":
        parts += ("image_encoder", "image_processor")
    sub = {name: _require(root / name, f"{name}/ folder", "diffusers") for name in parts}
    dit = WanDiTConfig.from_diffusers(_read_json(_require(sub["transformer"] / "config.json", "transformer config", "diffusers")))
    task = _check_task(dit.model_type, root)  # i2v vs flf2v: the transformer config tells
    t5 = UMT5Config.from_transformers(_read_json(_require(sub["text_encoder"] / "config.json", "text encoder config", "diffusers")))
    vae = WanVAEConfig.from_diffusers(_read_json(_require(sub["vae"] / "config.json", "VAE config", "diffusers")))
    sched = _read_json(_require(sub["scheduler"] / "scheduler_config.json", "scheduler config", "diffusers"))
    files = {
        "dit": [str(p) for p in find_weights(sub["transformer"], DIT_STEM, "transformer", "diffusers")],
        "text_encoder": [str(p) for p in find_weights(sub["text_encoder"], "model", "text encoder", "diffusers")],
        "tokenizer": str(sub["tokenizer"]),
        "vae": [str(p) for p in find_weights(sub["vae"], DIT_STEM, "VAE", "diffusers")],
        "scheduler_config": str(sub["scheduler"] / "scheduler_config.json"),
    }
    clip = processor = None
    if task != "t2v":
        from lightx2v.models.wan.clip import CLIPVisionConfig

        enc = sub["image_encoder"]
        clip = CLIPVisionConfig.from_transformers(_read_json(_require(enc / "config.json", "image encoder config", "diffusers")))
        files["clip"] = [str(p) for p in find_weights(enc, "model", "image encoder", "diffusers")]
        processor = _read_json(_require(sub["image_processor"] / "preprocessor_config.json", "image processor config", "diffusers"))
    return ModelConfig(
        family="wan2.1", task=task, layout="diffusers", root=root, files=files,
        dit=dit, vae=vae, text_encoder=t5, defaults=diffusers_defaults(task, dit, sched),
        clip=clip, image_processor=processor,
    )


def _detect_layout(root: Path) -> ModelConfig:
    if (root / "model_index.json").is_file():
        return detect_diffusers(root)
    if (root / "config.json").is_file():
        return detect_official(root)
    raise CheckpointError(
        f"{root} is not a model folder we know: expected an official Wan folder (config.json, "
        f"{DIT_STEM}*.safetensors, {OFFICIAL_T5}, {OFFICIAL_VAE}, {OFFICIAL_TOKENIZER}/) "
        "or a diffusers folder (model_index.json, transformer/, text_encoder/, tokenizer/, vae/, scheduler/)"
    )


def with_dit_file(mc: ModelConfig, dit_path: str | Path) -> ModelConfig:
    """The folder's DiT replaced by a file the user gives (a distilled single file, a quantized
    file, ComfyUI or diffusers keys, shards, a block folder); it must fit the folder's model."""
    from lightx2v.loading.dit_files import check_dit_matches, inspect_dit_source

    src = inspect_dit_source(dit_path)
    check_dit_matches(src.config, mc.dit, str(dit_path))
    return dataclasses.replace(mc, files={**mc.files, "dit": [str(p) for p in src.files]}, dit_source=src)


def with_distill(mc: ModelConfig, preset: str | None, hints: tuple[str, ...]) -> ModelConfig:
    """Step-distilled sampling defaults when the user names a preset or the checkpoint says so
    (a LightX2V config, its distill_models/ folder); file or folder names are only a hint, and
    what was assumed is said in a warning."""
    from lightx2v.models.wan.distill import DISTILL_WEIGHT_FILES, distill_preset_for

    config = None
    if mc.layout == "official":
        config = _read_json(mc.root / "config.json")
    match = distill_preset_for(mc.task, preset=preset, config=config, root=mc.root, dit=mc.dit)
    for name in hints:
        if match is not None:
            break
        match = distill_preset_for(mc.task, name=name, dit=mc.dit)
    if match is None:
        return mc
    if match.notice:
        warnings.warn(match.notice, stacklevel=3)
    d = match.defaults
    defaults = dataclasses.replace(d.sampling_defaults(mc.defaults.negative_prompt, mc.defaults.fps),
                                   solver_options=d.solver_options())
    mc = dataclasses.replace(mc, defaults=defaults, distill=match)
    weights = [mc.root / rel for rel in DISTILL_WEIGHT_FILES if (mc.root / rel).is_file()]
    if weights and mc.dit_source is None:  # LightX2V's layout: the distilled DiT beside the base files
        mc = with_dit_file(mc, weights[0])
    return mc


def detect(path: str | Path, *, dit_path: str | Path | None = None, preset: str | None = None,
           hints: tuple[str, ...] = ()) -> ModelConfig:
    """ModelConfig of a local model folder; a clear CheckpointError if it is not one we know.

    dit_path: DiT weights that replace the folder's; preset: a distilled-model preset name;
    hints: names (LoRA files) that may tell a distilled model apart, as a last resort.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CheckpointError(f"model folder not found: {root}")
    if not root.is_dir():
        raise CheckpointError(f"{root} is a file; expected a model folder (official Wan or diffusers layout); "
                              "a DiT file goes with --dit-path beside its model folder")
    mc = _detect_layout(root)
    if dit_path is not None:
        mc = with_dit_file(mc, dit_path)
    names = tuple(Path(h).name for h in ((dit_path,) if dit_path else ()) + tuple(hints)) + (root.name,)
    return with_distill(mc, preset, names)
