"""The official tencent/HunyuanVideo-1.5 release folder (no weights read here).

    transformer/<variant>/   config.json + diffusion_pytorch_model.safetensors   (official DiT keys;
                             variants 480p_t2v, 480p_i2v, 720p_t2v, 720p_i2v, their _distilled
                             CFG-distilled twins, 720p_i2v_distilled_sparse, 480p_i2v_step_distilled;
                             720p_sr_distilled / 1080p_sr_distilled are super-resolution DiTs: refused)
    vae/                     config.json (AutoencoderKLConv3D) + diffusion_pytorch_model.safetensors
    scheduler/               scheduler_config.json (FlowMatchDiscreteScheduler)
    text_encoder/llm/        Qwen/Qwen2.5-VL-7B-Instruct as downloaded (config qwen2_5_vl, model-*.safetensors,
                             its tokenizer and chat template; the vision tower and LM head are not loaded)
    text_encoder/byt5-small/ google/byt5-small: its config.json and ByT5 tokenizer files
    text_encoder/Glyph-SDXL-v2/
        assets/color_idx.json, assets/multilingual_10-lang_idx.json   the glyph tokens added to the tokenizer
        checkpoints/byt5_model.pt                                     the byT5 encoder's weights (T5Stack keys,
                                                                      or under state_dict with the
                                                                      `module.text_tower.encoder.` prefix)
    vision_encoder/siglip/   black-forest-labs/FLUX.1-Redux-dev: image_encoder/ (SiglipVisionModel) and
                             feature_extractor/ (SiglipImageProcessor); image-to-video only

(the reference: checkpoints-download.md and hyvideo/pipelines/hunyuan_video_pipeline.py `create_pipeline`,
`_load_byt5`, `_load_text_encoders`, `_load_vision_encoder`; hyvideo/models/text_encoders/byT5/__init__.py).

Design: one folder holds several DiTs, so the DiT is chosen by the path: the release root works when
transformer/ holds one usable variant; otherwise pass transformer/<variant> itself (the root is then
two levels up). The variant's name gives the reference's sampling defaults (`VARIANT_DEFAULTS`, its
hyvideo/commons PIPELINE_CONFIGS); its config.json's `ideal_task` / `ideal_resolution` give the task
and the size buckets (480p: 640, 720p: 960, as the reference's `target_size_config`). The weights
keep the release's names: the DiT and VAE load as they are (our modules use the official keys).
"""

from __future__ import annotations

from pathlib import Path

from lightx2v.config import ModelConfig, SamplingDefaults
from lightx2v.errors import CheckpointError
from lightx2v.models.registry import Reason

# variant -> (flow shift, guidance scale, steps): the reference's PIPELINE_CONFIGS (hyvideo/commons/__init__.py)
VARIANT_DEFAULTS = {
    "480p_t2v": (5.0, 6.0, 50), "480p_i2v": (5.0, 6.0, 50), "720p_t2v": (9.0, 6.0, 50), "720p_i2v": (7.0, 6.0, 50),
    "480p_t2v_distilled": (5.0, 1.0, 50), "480p_i2v_distilled": (5.0, 1.0, 50),
    "720p_t2v_distilled": (9.0, 1.0, 50), "720p_i2v_distilled": (7.0, 1.0, 50),
    "720p_t2v_distilled_sparse": (9.0, 1.0, 50), "720p_i2v_distilled_sparse": (7.0, 1.0, 50),
    "480p_i2v_step_distilled": (7.0, 1.0, 12),
}
# the reference's target_size_config: resolution name -> bucket base size (pixels)
TARGET_SIZES = {"360p": 480, "480p": 640, "720p": 960, "1080p": 1440}
LLM, BYT5, GLYPH, SIGLIP = "text_encoder/llm", "text_encoder/byt5-small", "text_encoder/Glyph-SDXL-v2", "vision_encoder/siglip"
BYT5_WEIGHTS = "checkpoints/byt5_model.pt"
GLYPH_ASSETS = ("assets/color_idx.json", "assets/multilingual_10-lang_idx.json")
BYT5_PREFIX = "module.text_tower.encoder."  # the Glyph-SDXL-v2 training checkpoint's prefix


def _is_variant(path: Path) -> bool:
    return path.parent.name == "transformer" and (path / "config.json").is_file() and (
        path.parent.parent / "vae").is_dir()


def recognise(root: Path) -> "str | Reason":
    if _is_variant(root):
        return "official"
    if (root / "transformer").is_dir() and (root / "vae" / "config.json").is_file() and (root / "text_encoder").is_dir():
        return "official"
    return Reason("no transformer/<variant>/, vae/ and text_encoder/ of the official release")


def split_root(path: Path) -> tuple[Path, Path]:
    """(release root, transformer/<variant> folder) of what the user passed."""
    if _is_variant(path):
        return path.parent.parent, path
    found = sorted(d for d in (path / "transformer").iterdir() if (d / "config.json").is_file())
    usable = [d for d in found if "_sr_" not in d.name]
    if len(usable) == 1:
        return path, usable[0]
    if not usable:
        raise CheckpointError(f"{path / 'transformer'} holds no text/image-to-video DiT (a <variant>/ folder with a "
                              "config.json, e.g. 480p_t2v/)")
    names = ", ".join(d.name for d in usable)
    raise CheckpointError(f"{path / 'transformer'} holds {len(usable)} DiTs ({names}); pass the one you mean, "
                          f"e.g. {path / 'transformer' / usable[0].name}")


def _resolution(name: str, dit) -> str | None:
    if dit.ideal_resolution in TARGET_SIZES:
        return dit.ideal_resolution
    head = name.split("_")[0]
    return head if head in TARGET_SIZES else None


def _task(name: str, dit, where: Path) -> str:
    parts = name.split("_")
    task = dit.ideal_task or next((p for p in parts if p in ("t2v", "i2v")), None)
    if "sr" in parts or task not in ("t2v", "i2v"):
        raise CheckpointError(f"{where} is a HunyuanVideo-1.5 {task or 'unknown-task'} DiT; lightx2v runs its "
                              "t2v and i2v DiTs (not the super-resolution ones)")
    return task


def variant_defaults(name: str, resolution: str | None, task: str) -> tuple[float, float, int]:
    """(shift, guidance, steps) of a variant: the reference's table; a renamed folder gets its
    resolution and task's base entry (guidance 1 when the name says it is CFG-distilled)."""
    if name in VARIANT_DEFAULTS:
        return VARIANT_DEFAULTS[name]
    shift, guidance, steps = VARIANT_DEFAULTS.get(f"{resolution or '480p'}_{task}", VARIANT_DEFAULTS[f"480p_{task}"])
    return shift, (1.0 if "distill" in name else guidance), steps


def check_scheduler(cfg: dict, where: Path) -> None:
    """The official FlowMatchDiscreteScheduler config: Euler on reversed, shifted sigmas (its shift is
    not used: the variant's flow_shift is, as in the reference)."""
    want = {"_class_name": "FlowMatchDiscreteScheduler", "solver": "euler", "reverse": True, "use_flux_shift": False}
    for key, value in want.items():
        if key in cfg and cfg[key] != value:
            raise CheckpointError(f"{where}: {key} = {cfg[key]!r} is not supported (expected {value!r})")
    if int(cfg.get("num_train_timesteps", 1000)) != 1000:
        raise CheckpointError(f"{where}: num_train_timesteps = {cfg['num_train_timesteps']} is not supported (1000)")


def _shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """The DiT's tensor shapes (headers only): what its config.json omits (byT5 width ...) comes from them."""
    from lightx2v.loading.safetensors_io import read_safetensors_header

    return {k: tuple(shape) for f in files for k, (shape, _) in read_safetensors_header(f).items()}


def read_config(path: Path) -> ModelConfig:
    from lightx2v.models.hunyuan15.dit_config import HunyuanVideo15DiTConfig
    from lightx2v.models.hunyuan15.encoders import llm_config_from_file, official_byt5_config, siglip_config_from_file
    from lightx2v.models.hunyuan15.layouts import FPS, NUM_FRAMES, STEM, Hunyuan15Arch, default_size
    from lightx2v.models.hunyuan15.vae_config import HunyuanVideo15VAEConfig
    from lightx2v.models.wan.layouts import _require, find_weights, read_json

    root, variant = split_root(path)

    def need(rel: str, what: str) -> Path:
        return _require(root / rel, what, "official")

    dit_files = find_weights(variant, STEM, "transformer", "official")
    dit = HunyuanVideo15DiTConfig.from_official(read_json(variant / "config.json"), shapes=_shapes(dit_files),
                                                where=str(variant / "config.json"))
    task = _task(variant.name, dit, variant)
    resolution = _resolution(variant.name, dit)
    sched = need("scheduler/scheduler_config.json", "scheduler config")
    check_scheduler(read_json(sched), sched)
    byt5_pt = need(f"{GLYPH}/{BYT5_WEIGHTS}", "Glyph-SDXL-v2 byT5 weights")
    assets = [need(f"{GLYPH}/{a}", "Glyph-SDXL-v2 glyph tokens") for a in GLYPH_ASSETS]
    siglip = need(SIGLIP, "SigLIP vision encoder (FLUX.1-Redux-dev)") if task == "i2v" else None
    target = TARGET_SIZES.get(resolution, TARGET_SIZES["480p"])
    arch = Hunyuan15Arch(
        dit=dit, vae=HunyuanVideo15VAEConfig.from_official(read_json(need("vae/config.json", "VAE config"))),
        text_encoder=llm_config_from_file(need(LLM, "Qwen2.5-VL-7B-Instruct text encoder")),
        text_encoder_2=official_byt5_config(need(BYT5, "google/byt5-small"), byt5_pt),
        image_encoder=None if siglip is None else siglip_config_from_file(_require(siglip / "image_encoder",
                                                                                   "SigLIP image_encoder/", "official")),
        target_size=target,
    )
    shift, guidance, steps = variant_defaults(variant.name, resolution, task)
    height, width = default_size(target)
    defaults = SamplingDefaults(num_inference_steps=steps, guidance_scale=guidance, shift=shift, solver="euler",
                                convention="diffusers", scheduler_config=None, negative_prompt="", fps=FPS,
                                height=height, width=width, num_frames=NUM_FRAMES)
    files = {
        "dit": tuple(str(p) for p in dit_files),
        "vae": tuple(str(p) for p in find_weights(root / "vae", STEM, "VAE", "official")),
        "text_encoder": tuple(str(p) for p in find_weights(root / LLM, "model", "text encoder", "official")),
        "text_encoder_2": (str(byt5_pt),),
        "tokenizer": str(root / LLM),
        "tokenizer_2": str(root / BYT5),
        "glyph_tokens": tuple(str(a) for a in assets),
        "scheduler_config": str(sched),
        "variant": variant.name,
    }
    if siglip is not None:
        files["image_encoder"] = tuple(str(p) for p in find_weights(siglip / "image_encoder", "model", "image encoder",
                                                                    "official"))
        files["feature_extractor"] = str(_require(siglip / "feature_extractor", "SigLIP feature_extractor/", "official"))
    return ModelConfig(family="hunyuanvideo-1.5", task=task, layout="official", root=root, files=files, arch=arch,
                       defaults=defaults)
