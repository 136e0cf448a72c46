"""Tiny random HunyuanVideo-1.5 checkpoints in the official release layout, with the same weights as a
diffusers-layout folder (so the two runs can be compared).

`write_pair(root, task)` -> (diffusers folder, official root, variant): the diffusers folder is written by
diffusers itself (tests/hunyuan15_fixtures.py's parts, its byT5 tokenizer given the glyph tokens and the
encoder's embedding grown to match, as the converted releases have them); the official root holds the
same tensors under the release's file and key names (lightx2v/models/hunyuan15/official.py):
transformer/<variant>/ (official DiT keys and config), vae/ (official keys, AutoencoderKLConv3D
config), scheduler/, text_encoder/llm (a whole Qwen2.5-VL: qwen2_5_vl config, `model.*` keys in two
shards with an index, plus a vision tower and LM head tensor that must not be loaded, and the
tokenizer), text_encoder/byt5-small (google's vocabulary size, ByT5 tokenizer), Glyph-SDXL-v2 (the
glyph token assets and byt5_model.pt under state_dict with the training prefix) and, for i2v,
vision_encoder/siglip/{image_encoder,feature_extractor}.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

COLORS = {"white": 0, "red": 1}
FONTS = {"en-font-Arial": 0, "zh-font-Hei": 7}


def _diffusers(root: Path, task: str, seed: int):
    import diffusers
    import transformers

    from lightx2v.models.hunyuan15.encoders import glyph_tokens
    from tests.hunyuan15_fixtures import DIT, I2V_TARGET, SIGLIP_SIZE, _parts, _save

    assets = root / "_assets"
    assets.mkdir(parents=True, exist_ok=True)
    (assets / "color_idx.json").write_text(json.dumps(COLORS))
    (assets / "multilingual_10-lang_idx.json").write_text(json.dumps(FONTS))
    parts = _parts(root, seed, task, I2V_TARGET if task == "i2v" else 640)
    tok2, byt5 = parts["tokenizer_2"], parts["text_encoder_2"]
    tok2.add_tokens(glyph_tokens(assets / "color_idx.json", assets / "multilingual_10-lang_idx.json"), special_tokens=True)
    byt5.resize_token_embeddings(len(tok2), mean_resizing=False)
    with torch.no_grad():
        byt5.shared.weight[-4:].normal_(0, 1)  # the new rows count too
    if task == "t2v":
        return _save(diffusers.HunyuanVideo15Pipeline(**parts), root)[0]
    siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=DIT["image_embed_dim"], intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        image_size=SIGLIP_SIZE, patch_size=14)).eval()
    processor = transformers.SiglipImageProcessor(size={"height": SIGLIP_SIZE, "width": SIGLIP_SIZE})
    ref = diffusers.HunyuanVideo15ImageToVideoPipeline(**parts, image_encoder=siglip, feature_extractor=processor)
    return _save(ref, root)[0]


def _write_dit(src: Path, dst: Path, task: str) -> None:
    from safetensors.torch import load_file, save_file

    from lightx2v.models.hunyuan15.dit_config import HunyuanVideo15DiTConfig
    from lightx2v.models.hunyuan15.dit_keys import state_dict_from_diffusers

    dst.mkdir(parents=True)
    cfg = HunyuanVideo15DiTConfig.from_diffusers(json.loads((src / "config.json").read_text()))
    official = cfg.to_official() | {"ideal_resolution": "480p", "ideal_task": task}
    (dst / "config.json").write_text(json.dumps({"_class_name": "HunyuanVideo_1_5_DiffusionTransformer", **official}))
    sd = state_dict_from_diffusers(load_file(str(src / "diffusion_pytorch_model.safetensors")))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst / "diffusion_pytorch_model.safetensors"))


def _write_vae(src: Path, dst: Path) -> None:
    import dataclasses

    from safetensors.torch import load_file, save_file

    from lightx2v.models.hunyuan15.vae_config import HunyuanVideo15VAEConfig
    from lightx2v.models.hunyuan15.vae_keys import state_dict_from_diffusers

    dst.mkdir(parents=True)
    cfg = dataclasses.asdict(HunyuanVideo15VAEConfig.from_diffusers(json.loads((src / "config.json").read_text())))
    (dst / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLConv3D", **cfg}))
    sd = state_dict_from_diffusers(load_file(str(src / "diffusion_pytorch_model.safetensors")))
    save_file(sd, str(dst / "diffusion_pytorch_model.safetensors"))


def _write_llm(src: Path, tokenizer: Path, dst: Path) -> None:
    """A whole Qwen2.5-VL folder as Qwen/Qwen2.5-VL-7B-Instruct is laid out (tiny)."""
    import transformers
    from safetensors.torch import load_file, save_file

    shutil.copytree(tokenizer, dst)
    text = transformers.AutoConfig.from_pretrained(str(src))
    vision = {"depth": 1, "hidden_size": 8, "intermediate_size": 8, "num_heads": 2, "out_hidden_size": 8}
    transformers.Qwen2_5_VLConfig(text_config=text.to_dict(), vision_config=vision).save_pretrained(str(dst))
    sd = {"model." + k: v for k, v in load_file(str(src / "model.safetensors")).items()}
    sd |= {"visual.patch_embed.proj.weight": torch.randn(8, 3, 2, 14, 14), "lm_head.weight": torch.randn(4, 32)}
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: sd[k].contiguous() for k in part}, str(dst / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))


def _write_byt5(src: Path, dst: Path, assets: Path) -> None:
    import transformers
    from safetensors.torch import load_file

    from lightx2v.models.hunyuan15.official import BYT5_PREFIX

    small = dst / "byt5-small"
    cfg = transformers.AutoConfig.from_pretrained(str(src))
    cfg.vocab_size = 384  # google/byt5-small's own; the glyph checkpoint has the added rows
    cfg.save_pretrained(str(small))
    transformers.ByT5Tokenizer().save_pretrained(str(small))
    glyph = dst / "Glyph-SDXL-v2"
    shutil.copytree(assets, glyph / "assets")
    stack = {}
    for k, v in load_file(str(src / "model.safetensors")).items():
        name = "embed_tokens.weight" if k == "shared.weight" else k[len("encoder."):]
        stack[BYT5_PREFIX + name] = v
    (glyph / "checkpoints").mkdir()
    torch.save({"state_dict": stack}, str(glyph / "checkpoints" / "byt5_model.pt"))


def write_official(folder: Path, out: Path, task: str, variant: str) -> Path:
    """The official layout of a diffusers-layout folder written by `_diffusers` (same tensors)."""
    _write_dit(folder / "transformer", out / "transformer" / variant, task)
    _write_vae(folder / "vae", out / "vae")
    (out / "scheduler").mkdir(parents=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "FlowMatchDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0, "reverse": True,
        "solver": "euler", "use_flux_shift": False}))
    _write_llm(folder / "text_encoder", folder / "tokenizer", out / "text_encoder" / "llm")
    _write_byt5(folder / "text_encoder_2", out / "text_encoder", folder.parent / "_assets")
    if task == "i2v":
        siglip = out / "vision_encoder" / "siglip"
        shutil.copytree(folder / "image_encoder", siglip / "image_encoder")
        shutil.copytree(folder / "feature_extractor", siglip / "feature_extractor")
    return out


def write_pair(root: Path, task: str = "t2v", seed: int = 0) -> tuple[Path, Path, str]:
    variant = f"480p_{task}"
    folder = _diffusers(root, task, seed)
    return folder, write_official(folder, root / "ckpts", task, variant), variant
