"""HunyuanVideo-1.5's two text encoders as components: built on meta, loaded by name (mmap + assign).

Design: we do not own them; transformers runs both (text.py holds what the reference does with them).
- `text_encoder`: Qwen2.5-VL-7B's language model, `Qwen2_5_VLTextModel`, wrapped by Qwen-Image's
  `QwenTextEncoder` (its `model`: the RoPE buffers rebuilt after a meta load). The diffusers folder
  stores the bare language model (`embed_tokens.weight`, `layers.{i}.*`, `norm.weight`: what
  `language_model.save_pretrained` writes), so `llm_key_from_file` prefixes `model.`; a full
  Qwen2.5-VL file (`model.language_model.*`, `model.*`) loads too, its vision tower and LM head dropped.
- `text_encoder_2`: the byT5 encoder (`T5EncoderModel`). Its file holds the shared embedding once
  (`shared.weight`; transformers ties `encoder.embed_tokens.weight` to it), so `read_byt5` gives both
  names the same tensor. The official release keeps it as google/byt5-small's config + tokenizer and
  Glyph-SDXL-v2's byt5_model.pt (T5Stack names, the glyph tokens' rows included): `official_byt5_config`,
  `read_official_byt5`, and `add_glyph_tokens` for its tokenizer (models/hunyuan15/official.py).
- `image_encoder` (image-to-video only): SigLIP's vision tower, transformers' `SiglipVisionModel`, with
  its `feature_extractor/` (`SiglipImageProcessor`: resize to its square size, normalise). A file
  written by transformers < 5 names the tensors `vision_model.*`, one written by transformers 5 drops
  that prefix; `siglip_key_from_file` maps both to the installed module's names. Its `position_ids`
  buffer (not in the file) is rebuilt after a meta load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from lightx2v.errors import CheckpointError

__all__ = ["add_glyph_tokens", "build_byt5", "build_llm", "build_siglip", "byt5_config_from_file", "glyph_tokens",
           "llm_config_from_file", "llm_key_from_file", "load_feature_extractor", "load_tokenizers",
           "official_byt5_config", "read_byt5", "read_official_byt5", "siglip_config_from_file", "siglip_key_from_file"]


def _auto_config(folder: Path, what: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot read the {what} config {folder / 'config.json'} ({exc})") from None


def llm_config_from_file(folder: str | Path) -> Any:
    """The Qwen2.5-VL text config of text_encoder/ (a qwen2_5_vl_text model, or a whole qwen2_5_vl one)."""
    cfg = _auto_config(Path(folder), "text encoder")
    kind = getattr(cfg, "model_type", None)
    if kind == "qwen2_5_vl":
        return cfg.text_config
    if kind != "qwen2_5_vl_text":
        raise CheckpointError(f"{Path(folder) / 'config.json'} is a {kind} model; HunyuanVideo-1.5's text encoder is "
                              "Qwen2.5-VL's language model (qwen2_5_vl_text)")
    return cfg


def byt5_config_from_file(folder: str | Path) -> Any:
    """The T5 config of text_encoder_2/ (the byT5 glyph encoder)."""
    cfg = _auto_config(Path(folder), "byT5 encoder")
    if getattr(cfg, "model_type", None) != "t5":
        raise CheckpointError(f"{Path(folder) / 'config.json'} is a {getattr(cfg, 'model_type', None)} model; "
                              "HunyuanVideo-1.5's glyph encoder is a byT5 T5EncoderModel (t5)")
    return cfg


def build_llm(config: Any) -> nn.Module:
    from lightx2v.models.qwen_image.text import QwenTextEncoder

    return QwenTextEncoder(config)


def llm_key_from_file(key: str) -> str | None:
    """Our name (`model.*`) for a text_encoder/ key; None for the vision tower and the LM head."""
    if key.startswith(("visual.", "model.visual.", "lm_head.")):
        return None
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key if key.startswith("model.") else "model." + key


def build_byt5(config: Any) -> nn.Module:
    from transformers import T5EncoderModel

    return T5EncoderModel(config)


def read_byt5(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A byT5 state dict with both names of the tied embedding (the file stores one)."""
    out = dict(sd)
    tied = ("shared.weight", "encoder.embed_tokens.weight")
    for a, b in (tied, tied[::-1]):
        if a in out and b not in out:
            out[b] = out[a]
    return out


# ---- the official release's byT5 (text_encoder/byt5-small + Glyph-SDXL-v2) -----------------------


def _byt5_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The Glyph-SDXL-v2 byt5_model.pt in T5Stack names (`embed_tokens.weight`, `block.{i}.*`, ...):
    `read_tensors` unwraps its `state_dict`; the training prefix, when there, is dropped."""
    from lightx2v.loading.state_dict import read_tensors
    from lightx2v.models.hunyuan15.official import BYT5_PREFIX

    sd = read_tensors(path)
    if any(k.startswith(BYT5_PREFIX) for k in sd):
        sd = {k[len(BYT5_PREFIX):]: v for k, v in sd.items() if k.startswith(BYT5_PREFIX)}
    if "embed_tokens.weight" not in sd:
        raise CheckpointError(f"{path} has no embed_tokens.weight; expected the Glyph-SDXL-v2 byT5 encoder "
                              f"(T5Stack keys, or {BYT5_PREFIX}* under state_dict)")
    return sd


def official_byt5_config(folder: str | Path, weights: str | Path) -> Any:
    """google/byt5-small's T5 config, its vocabulary grown to the glyph checkpoint's embedding rows
    (the reference adds the glyph colour / font tokens and resizes the embedding before loading it)."""
    cfg = byt5_config_from_file(folder)
    cfg.vocab_size = int(_byt5_file(weights)["embed_tokens.weight"].shape[0])
    return cfg


def read_official_byt5(path: str | Path) -> dict[str, torch.Tensor]:
    """byt5_model.pt in T5EncoderModel names: `encoder.` + the T5Stack key; the embedding also as `shared`."""
    sd = {"encoder." + k: v for k, v in _byt5_file(path).items()}
    return read_byt5(sd | {"shared.weight": sd["encoder.embed_tokens.weight"]})


def glyph_tokens(color_file: str | Path, font_file: str | Path) -> list[str]:
    """The tokens the reference adds to the byT5 tokenizer (byT5/__init__.py `add_special_token`,
    multilingual): `<color-{i}>` for each colour, then `<{code[:2]}-font-{idx}>` for each font."""
    import json

    colors, fonts = (json.loads(Path(f).read_text()) for f in (color_file, font_file))
    return [f"<color-{i}>" for i in range(len(colors))] + [f"<{code[:2]}-font-{fonts[code]}>" for code in fonts]


def add_glyph_tokens(tokenizer: Any, color_file: str | Path, font_file: str | Path) -> Any:
    tokenizer.add_tokens(glyph_tokens(color_file, font_file), special_tokens=True)
    return tokenizer


def load_tokenizers(llm_folder: str | Path, byt5_folder: str | Path) -> tuple[Any, Any]:
    """(the Qwen2.5-VL tokenizer, the byT5 tokenizer) of tokenizer/ and tokenizer_2/."""
    from transformers import AutoTokenizer

    out = []
    for folder, what in ((llm_folder, "the Qwen2.5-VL tokenizer (with its chat template)"),
                         (byt5_folder, "the byT5 tokenizer")):
        try:
            out.append(AutoTokenizer.from_pretrained(str(folder)))
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"cannot load the tokenizer in {folder} ({exc}); expected {what}") from None
    if getattr(out[0], "chat_template", None) is None:
        raise CheckpointError(f"the tokenizer in {llm_folder} has no chat template; HunyuanVideo-1.5 renders its "
                              "prompt template with the Qwen2.5-VL tokenizer's")
    return out[0], out[1]


# ---- the SigLIP image encoder (image-to-video) ----------------------------------------------------


def siglip_config_from_file(folder: str | Path) -> Any:
    """The SigLIP vision config of image_encoder/ (a siglip_vision_model, or a whole siglip model's)."""
    cfg = _auto_config(Path(folder), "SigLIP image encoder")
    kind = getattr(cfg, "model_type", None)
    if kind == "siglip":
        return cfg.vision_config
    if kind != "siglip_vision_model":
        raise CheckpointError(f"{Path(folder) / 'config.json'} is a {kind} model; HunyuanVideo-1.5's image encoder "
                              "is a SigLIP vision model (siglip_vision_model)")
    return cfg


def build_siglip(config: Any) -> nn.Module:
    import copy

    from transformers import SiglipVisionModel

    config = copy.deepcopy(config)
    config._attn_implementation = "sdpa"  # what from_pretrained picks in the reference
    model = SiglipVisionModel(config)
    model.register_load_state_dict_post_hook(_rebuild_position_ids)
    return model


def _rebuild_position_ids(module: nn.Module, incompatible_keys: Any) -> None:
    """After a meta load: the patch positions (a non-persistent buffer, 0 .. n-1) where the weights are."""
    emb = getattr(module, "vision_model", module).embeddings  # transformers < 5 nests it in vision_model
    if emb.position_ids.is_meta:
        ids = torch.arange(emb.num_positions, device=emb.position_embedding.weight.device).expand((1, -1))
        emb.register_buffer("position_ids", ids, persistent=False)


def siglip_key_from_file(key: str, nested: bool) -> str:
    """The installed SiglipVisionModel's name for an image_encoder/ key (`nested`: it has `vision_model`)."""
    bare = key[len("vision_model."):] if key.startswith("vision_model.") else key
    return "vision_model." + bare if nested else bare


def load_feature_extractor(folder: str | Path) -> Any:
    """transformers' SiglipImageProcessor of feature_extractor/ (what turns the image into SigLIP pixels)."""
    from transformers import SiglipImageProcessor

    try:
        return SiglipImageProcessor.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot load the SigLIP image processor in {folder} ({exc}); expected a "
                              "preprocessor_config.json of a SiglipImageProcessor") from None
