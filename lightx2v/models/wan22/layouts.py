"""Wan2.2 checkpoints on disk: recognising the two layouts and reading their configs (no weights).

official, A14B (Wan-AI/Wan2.2-{T2V,I2V}-A14B)     official, TI2V-5B (Wan-AI/Wan2.2-TI2V-5B)
  high_noise_model/  config.json + shards + index    config.json (model_type ti2v)
  low_noise_model/   config.json + shards + index    diffusion_pytorch_model-0000i-of-0000N.safetensors + index
  models_t5_umt5-xxl-enc-bf16.pth                    models_t5_umt5-xxl-enc-bf16.pth
  google/umt5-xxl/   (tokenizer)                     google/umt5-xxl/
  Wan2.1_VAE.pth     (no CLIP)                       Wan2.2_VAE.pth

diffusers (Wan-AI/Wan2.2-*-Diffusers): model_index.json of WanPipeline (t2v, ti2v) or
WanImageToVideoPipeline (i2v) with transformer/ (the HIGH-noise expert), transformer_2/ (the
LOW-noise one) and boundary_ratio; TI2V-5B: WanPipeline with expand_timesteps true, one
transformer/ and the Wan2.2 vae/ (AutoencoderKLWan is_residual, z_dim 48). No image encoder.

`recognise` looks at names only and takes a folder that says it is Wan2.2 (two experts,
Wan2.2_VAE.pth, model_type ti2v, a model_index.json setting transformer_2 / boundary_ratio /
expand_timesteps); `read_config` then reads everything and refuses by name what contradicts
(one expert missing, experts of different shapes, a boundary outside (0, 1), the other VAE ...).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from lightx2v.config import ModelConfig
from lightx2v.errors import CheckpointError
from lightx2v.models.registry import Reason
from lightx2v.models.wan.layouts import (
    DIT_STEM, OFFICIAL_T5, OFFICIAL_TOKENIZER, entry_is_set, find_weights, read_json,
)
from lightx2v.models.wan22.arch import Wan22Arch

OFFICIAL_VAE = {"a14b": "Wan2.1_VAE.pth", "ti2v": "Wan2.2_VAE.pth"}
EXPERT_FOLDERS = {"official": ("high_noise_model", "low_noise_model"), "diffusers": ("transformer", "transformer_2")}
TASKS = ("t2v", "i2v", "ti2v")
# model_index.json _class_name -> task of a two-expert folder (expand_timesteps: ti2v, either class)
DIFFUSERS_PIPELINES = {"WanPipeline": "t2v", "WanImageToVideoPipeline": "i2v"}
DIFFUSERS_PARTS = ("transformer", "transformer_2", "text_encoder", "tokenizer", "vae", "scheduler")
DIFFUSERS_OPTIONS = ("boundary_ratio", "expand_timesteps")
DIFFUSERS_UNUSED = ("image_encoder", "image_processor")  # WanImageToVideoPipeline's; Wan2.2 has no CLIP


# ---------------------------------------------------------------- recognising


def recognise(root: Path) -> "str | Reason":
    """'official' or 'diffusers' when `root` is a Wan2.2 folder, else why not."""
    if (root / "model_index.json").is_file():
        index = read_json(root / "model_index.json")
        cls = index.get("_class_name", "?")
        if cls not in DIFFUSERS_PIPELINES:
            return Reason(f"model_index.json names {cls}, not {' or '.join(DIFFUSERS_PIPELINES)}")
        if not any(entry_is_set(index.get(k)) for k in ("transformer_2", "boundary_ratio", "expand_timesteps")):
            return Reason("its model_index.json sets none of transformer_2, boundary_ratio, expand_timesteps "
                          "(a one-transformer Wan2.1 pipeline)")
        return "diffusers"
    if any((root / name).exists() for name in EXPERT_FOLDERS["official"]):
        return "official"
    if (root / "config.json").is_file():
        cfg = read_json(root / "config.json")
        cls = cfg.get("_class_name")
        if cls not in (None, "WanModel") or "dim" not in cfg:
            return Reason(f"config.json is {'a ' + cls if cls else 'not a Wan DiT config'} (expected _class_name "
                          "WanModel with dim, num_heads, ...)")
        if cfg.get("model_type") == "ti2v" or (root / OFFICIAL_VAE["ti2v"]).exists():
            return "official"
        return Reason(f"one DiT with model_type {cfg.get('model_type', 't2v')!r} and no {OFFICIAL_VAE['ti2v']} "
                      "(a Wan2.1 folder); Wan2.2 has high_noise_model/ + low_noise_model/ (A14B) or "
                      f"model_type ti2v with {OFFICIAL_VAE['ti2v']} (TI2V-5B)")
    return Reason("neither an official folder (high_noise_model/ + low_noise_model/, or config.json of model_type "
                  f"ti2v with {OFFICIAL_VAE['ti2v']}) nor a diffusers folder (model_index.json with transformer_2 "
                  "and boundary_ratio, or expand_timesteps)")


# ---------------------------------------------------------------- shared checks


def _require(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise CheckpointError(f"{what} not found: expected {path} in the Wan2.2 {layout} layout")
    return path


def _check_experts(high, low, names: tuple[str, str]) -> None:
    """The two experts must be the same architecture (they run on the same latents and text)."""
    import dataclasses

    a, b = dataclasses.asdict(high), dataclasses.asdict(low)
    diff = [f"{k} {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]]
    if diff:
        raise CheckpointError(f"the two experts differ: {names[0]}/ (high noise) vs {names[1]}/ (low noise): "
                              f"{', '.join(diff[:4])}; both must be the same architecture")


def _check_dit(dit, task: str, where: str) -> None:
    """The DiT's model type must be the checkpoint kind's: t2v / i2v without a CLIP branch / ti2v."""
    if dit.has_image_branch:
        raise CheckpointError(f"{where} has a CLIP image branch (image_dim {dit.image_dim}); Wan2.2 I2V-A14B has none "
                              "(is it a Wan2.1 I2V DiT?)")
    if dit.model_type != task:
        expect = {"t2v": "in = out channels (16)", "i2v": "36 input channels (noise + mask + image latents)",
                  "ti2v": "48 channels in and out (the Wan2.2 VAE's)"}[task]
        raise CheckpointError(f"{where} is a {dit.model_type} DiT ({dit.in_dim} -> {dit.out_dim} channels); a "
                              f"Wan2.2 {task} checkpoint needs model_type {task}: {expect}")


def _check_fit(dit, vae, t5, where: Path) -> None:
    if vae.z_dim != dit.out_dim:
        raise CheckpointError(f"{where}: the VAE has {vae.z_dim} latent channels, the DiT outputs {dit.out_dim}")
    if t5.dim != dit.text_dim:
        raise CheckpointError(f"{where}: the text encoder is {t5.dim} wide, the DiT's text_dim is {dit.text_dim}")


def _files(paths) -> tuple[str, ...]:
    return tuple(str(p) for p in paths)


# ---------------------------------------------------------------- official


def _official_expert(folder: Path):
    """(WanDiTConfig, files) of one official DiT folder: its config.json, fields it omits from the shapes."""
    from lightx2v.loading.dit_files import inspect_dit_files
    from lightx2v.models.wan.dit import WanDiTConfig

    cfg = read_json(_require(folder / "config.json", "DiT config", "official"))
    files = find_weights(folder, DIT_STEM, f"DiT ({folder.name})", "official")
    try:
        dit = WanDiTConfig.from_official(cfg, shapes=inspect_dit_files(files).shapes)
    except CheckpointError as exc:
        raise CheckpointError(f"{folder}: {exc}") from None
    return dit, _files(files)


def read_official(root: Path) -> ModelConfig:
    from lightx2v.loading.state_dict import read_tensors
    from lightx2v.models.wan.infer import t5_config_from_state_dict, vae_config_from_state_dict
    from lightx2v.models.wan.vae22 import vae22_config_from_state_dict
    from lightx2v.models.wan22.presets import OFFICIAL, official_defaults

    high_dir, low_dir = (root / n for n in EXPERT_FOLDERS["official"])
    a14b = high_dir.exists() or low_dir.exists()
    vae_name, other_vae = (OFFICIAL_VAE["a14b"], OFFICIAL_VAE["ti2v"]) if a14b else (OFFICIAL_VAE["ti2v"], OFFICIAL_VAE["a14b"])
    kind = "A14B (two experts)" if a14b else "TI2V-5B"
    if (root / other_vae).exists():
        raise CheckpointError(f"{root} holds {other_vae}, which Wan2.2 {kind} does not use (it uses {vae_name}); "
                              "is it a mix of two releases?")
    files = {"text_encoder": str(_require(root / OFFICIAL_T5, "text encoder", "official")),
             "tokenizer": str(_require(root / OFFICIAL_TOKENIZER, "tokenizer folder", "official")),
             "vae": str(_require(root / vae_name, "VAE", "official"))}
    dit_2 = None
    if a14b:
        for d in (high_dir, low_dir):
            if not d.is_dir():
                raise CheckpointError(f"{d.name}/ not found in {root}: a Wan2.2 A14B folder holds both "
                                      f"{high_dir.name}/ (high-noise expert) and {low_dir.name}/ (low-noise expert)")
        if (root / "config.json").is_file() and "dim" in read_json(root / "config.json"):
            raise CheckpointError(f"{root}/config.json describes a DiT, but this folder's DiTs are its experts "
                                  f"{high_dir.name}/ and {low_dir.name}/ (each with its own config.json)")
        (dit, files["dit"]), (dit_2, files["dit_2"]) = _official_expert(high_dir), _official_expert(low_dir)
        _check_experts(dit, dit_2, (high_dir.name, low_dir.name))
        task = dit.model_type
        if task not in ("t2v", "i2v"):
            raise CheckpointError(f"{high_dir} is a {task} DiT; Wan2.2 A14B experts are t2v or i2v")
        vae = vae_config_from_state_dict(read_tensors(files["vae"]), vae_name)
    else:
        dit, files["dit"] = _official_expert(root)
        task = "ti2v"
        vae = vae22_config_from_state_dict(read_tensors(files["vae"]), vae_name)
    _check_dit(dit, task, str(high_dir if a14b else root))
    t5 = t5_config_from_state_dict(read_tensors(files["text_encoder"]), OFFICIAL_T5)
    _check_fit(dit, vae, t5, root)
    arch = Wan22Arch(dit=dit, dit_2=dit_2, vae=vae, text_encoder=t5, boundary=OFFICIAL[task].boundary)
    return ModelConfig(family="wan2.2", task=task, layout="official", root=root, files=files, arch=arch,
                       defaults=official_defaults(task))


# ---------------------------------------------------------------- diffusers


def _check_index(index: Mapping[str, Any], where: Path) -> tuple[str, float | None]:
    """(task, boundary_ratio) from model_index.json; every entry honoured or refused by name."""
    known = DIFFUSERS_PARTS + DIFFUSERS_OPTIONS + DIFFUSERS_UNUSED
    unknown = [k for k, v in index.items() if not k.startswith("_") and k not in known and entry_is_set(v)]
    if unknown:
        raise CheckpointError(f"{where}: unknown entry {unknown[0]}={json.dumps(index[unknown[0]])}; Wan2.2 reads "
                              f"{', '.join(DIFFUSERS_PARTS + DIFFUSERS_OPTIONS)}")
    used = [k for k in DIFFUSERS_UNUSED if entry_is_set(index.get(k))]
    if used:
        raise CheckpointError(f"{where} sets {used[0]}={json.dumps(index[used[0]])}; Wan2.2 uses no image encoder "
                              "(the I2V-A14B DiT has no CLIP branch)")
    if not entry_is_set(index.get("transformer")):
        raise CheckpointError(f"{where} sets no transformer (the high-noise expert, or TI2V-5B's DiT)")
    expand, ratio, two = index.get("expand_timesteps", False), index.get("boundary_ratio"), entry_is_set(index.get("transformer_2"))
    if not isinstance(expand, bool):
        raise CheckpointError(f"{where}: expand_timesteps must be true or false, got {json.dumps(expand)}")
    if expand:
        if two or ratio is not None:
            stated = "transformer_2" if two else f"boundary_ratio {ratio}"
            raise CheckpointError(f"{where} sets expand_timesteps true (TI2V-5B, one DiT) and {stated} (two experts); "
                                  "a Wan2.2 pipeline is one or the other")
        return "ti2v", None
    if not two:
        raise CheckpointError(f"{where} sets boundary_ratio {ratio} without transformer_2: the boundary splits the "
                              "steps between transformer/ (high noise) and transformer_2/ (low noise)")
    if ratio is None:
        raise CheckpointError(f"{where} sets transformer_2 without boundary_ratio: nothing says at which timestep "
                              "transformer_2/ (the low-noise expert) takes over")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or not 0 < ratio < 1:
        raise CheckpointError(f"{where}: boundary_ratio {json.dumps(ratio)} must be a number between 0 and 1 "
                              "(exclusive): the fraction of the 1000 training timesteps where the experts switch")
    return DIFFUSERS_PIPELINES[index["_class_name"]], float(ratio)


def _diffusers_vae(config: Mapping[str, Any], task: str, where: Path):
    from lightx2v.models.wan.vae import WanVAEConfig
    from lightx2v.models.wan.vae22 import Wan22VAEConfig

    residual = bool(config.get("is_residual"))
    if residual != (task == "ti2v"):
        need = ("the Wan2.2 VAE (is_residual true, z_dim 48)" if task == "ti2v"
                else "the Wan2.1 VAE (is_residual false, z_dim 16)")
        raise CheckpointError(f"{where}/vae/config.json is_residual {json.dumps(config.get('is_residual'))}; Wan2.2 "
                              f"{'TI2V-5B' if task == 'ti2v' else 'A14B'} uses {need}")
    return (Wan22VAEConfig if residual else WanVAEConfig).from_diffusers(config)


def read_diffusers(root: Path) -> ModelConfig:
    from lightx2v.models.wan.dit import WanDiTConfig
    from lightx2v.models.wan.t5 import UMT5Config
    from lightx2v.models.wan22.presets import diffusers_defaults

    task, ratio = _check_index(read_json(root / "model_index.json"), root / "model_index.json")
    parts = [p for p in DIFFUSERS_PARTS if task != "ti2v" or p != "transformer_2"]
    sub = {name: _require(root / name, f"{name}/ folder", "diffusers") for name in parts}

    def config(part: str, name: str = "config.json") -> dict:
        return read_json(_require(sub[part] / name, f"{part} config", "diffusers"))

    dit = WanDiTConfig.from_diffusers(config("transformer"))
    _check_dit(dit, task, str(sub["transformer"]))
    dit_2 = None
    files = {"dit": _files(find_weights(sub["transformer"], DIT_STEM, "transformer", "diffusers"))}
    if task != "ti2v":
        dit_2 = WanDiTConfig.from_diffusers(config("transformer_2"))
        _check_experts(dit, dit_2, EXPERT_FOLDERS["diffusers"])
        files["dit_2"] = _files(find_weights(sub["transformer_2"], DIT_STEM, "transformer_2", "diffusers"))
    vae = _diffusers_vae(config("vae"), task, root)
    t5 = UMT5Config.from_transformers(config("text_encoder"))
    _check_fit(dit, vae, t5, root)
    sched = config("scheduler", "scheduler_config.json")
    files.update({
        "text_encoder": _files(find_weights(sub["text_encoder"], "model", "text encoder", "diffusers")),
        "tokenizer": str(sub["tokenizer"]),
        "vae": _files(find_weights(sub["vae"], DIT_STEM, "VAE", "diffusers")),
        "scheduler_config": str(sub["scheduler"] / "scheduler_config.json"),
    })
    arch = Wan22Arch(dit=dit, dit_2=dit_2, vae=vae, text_encoder=t5, boundary=ratio)
    return ModelConfig(family="wan2.2", task=task, layout="diffusers", root=root, files=files, arch=arch,
                       defaults=diffusers_defaults(task, sched))


def read_config(root: Path, layout: str) -> ModelConfig:
    return read_official(root) if layout == "official" else read_diffusers(root)
