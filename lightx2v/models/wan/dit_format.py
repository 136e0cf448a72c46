"""The Wan DiT's file format: how its tensors are named in each key format, and what model they make.

Design: the generic DiT-file code (lightx2v.loading.dit_files: single files, shards, block folders,
quantized files; lightx2v.loading.convert) reads a family's `DitFormat` and names no family. For
Wan this is `WAN_DIT_FORMAT`:

- key formats: `official` (Wan-AI, LightX2V), `comfyui` (official names under a
  `model.diffusion_model.` prefix) and `diffusers` (`WanTransformer3DModel` names, renamed by
  `dit_key_from_diffusers`); the anchor `patch_embedding.weight` is present once in any DiT;
- the config read off tensor shapes (`dit_config_from_state_dict`; heads, text_len and eps
  cannot be read there and come from the folder's config, or Wan's values);
- for convert: the diffusers names of every official key, and both config.json formats.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Optional, Union

from torch import Tensor, nn

from lightx2v.errors import CheckpointError
from lightx2v.models.wan.dit import WanDiTConfig, WanModel, dit_key_from_diffusers, image_fields_from_shapes
from lightx2v.models.wan.dit_config import TI2V_CHANNELS, weights_type

_OFFICIAL_BLOCK = re.compile(r"blocks\.\d+\.(self_attn|cross_attn|ffn\.\d+)\.")
_DIFFUSERS_BLOCK = re.compile(r"blocks\.\d+\.(attn1|attn2|ffn\.net)\.")
_BLOCK_INDEX = re.compile(r"blocks\.(\d+)\.")

def describe_config(cfg: WanDiTConfig) -> str:
    """'Wan2.1 14B i2v DiT (dim 5120, 40 layers)'."""
    from lightx2v.models.wan.presets import SIZES

    # TI2V-5B and I2V-A14B (no CLIP branch) are Wan2.2's; the T2V-A14B experts look like Wan2.1 14B
    wan22 = cfg.model_type == "ti2v" or cfg.in_dim == TI2V_CHANNELS or (cfg.needs_y and not cfg.has_image_branch)
    family = "Wan2.2" if wan22 else "Wan2.1"
    size = SIZES.get((cfg.dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim))
    return f"{family} {size + ' ' if size else ''}{cfg.model_type} DiT (dim {cfg.dim}, {cfg.num_layers} layers)"


def _guess_heads(dim: int) -> int:
    # every Wan2.1/2.2 release uses 128-wide heads; heads cannot be read off the shapes
    return next((dim // hd for hd in (128, 64, 32, 16, 8, 2) if dim % hd == 0), 1)


def dit_config_from_state_dict(
    sd: Mapping[str, Union[Tensor, tuple[int, ...]]], *, base: Optional[WanDiTConfig] = None, what: str = "DiT checkpoint",
) -> WanDiTConfig:
    """WanDiTConfig of an official-keyed DiT state dict (tensors or shapes; only shapes are read).

    num_heads, text_len and eps cannot be read off the tensors: they come from `base` (the model
    folder's config) when given, else Wan's values (128-wide heads, 512 text tokens, 1e-6).
    model_type: flf2v / i2v with img_emb tensors (the CLIP branch); i2v without a CLIP branch
    (image_dim None: Wan2.2 I2V-A14B) when in_dim != out_dim (y's channels); else t2v, or ti2v on
    TI2V_CHANNELS (48) channels, or `base`'s t2v / ti2v (the weights cannot tell them apart).
    """
    shapes = {k: tuple(v.shape) if isinstance(v, Tensor) else tuple(v) for k, v in sd.items()}

    def need(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointError(f"{what} has no tensor {key}; is it a complete Wan DiT?")
        return shapes[key]

    dim, in_dim, *patch = need("patch_embedding.weight")
    blocks = sorted({int(m[1]) for k in shapes if (m := _BLOCK_INDEX.match(k))})
    if blocks != list(range(len(blocks))) or not blocks:
        gap = next((i for i in range(len(blocks) + 1) if i not in blocks), 0)
        raise CheckpointError(f"{what} has no tensors for blocks.{gap} (blocks found: {len(blocks)}); is it complete?")
    has_img = any(k.startswith("img_emb.") for k in shapes)
    out_dim = need("head.head.weight")[0] // math.prod(patch)
    image = image_fields_from_shapes(shapes, base)  # image_dim, clip_tokens, image_kv_proj, rope_max_seq_len
    if has_img:
        model_type = "flf2v" if "img_emb.emb_pos" in shapes else "i2v"
    elif in_dim != out_dim:  # y (mask + image latents) on the input channels, no CLIP branch
        model_type, image["image_dim"] = "i2v", None
    else:
        model_type = "ti2v" if in_dim == TI2V_CHANNELS else "t2v"
        if base is not None and weights_type(base.model_type) == "t2v":
            model_type = base.model_type
    return WanDiTConfig(
        model_type=model_type,
        in_dim=in_dim, dim=dim, ffn_dim=need("blocks.0.ffn.0.weight")[0],
        num_heads=base.num_heads if base else _guess_heads(dim), num_layers=len(blocks), patch_size=tuple(patch),
        text_len=base.text_len if base else 512, freq_dim=need("time_embedding.0.weight")[1],
        text_dim=need("text_embedding.0.weight")[1], out_dim=out_dim,
        qk_norm="blocks.0.self_attn.norm_q.weight" in shapes, cross_attn_norm="blocks.0.norm3.weight" in shapes,
        eps=base.eps if base else 1e-6, **image,
    )


_SHAPE_FIELDS = ("model_type", "in_dim", "dim", "ffn_dim", "num_layers", "patch_size", "freq_dim", "text_dim",
                 "out_dim", "qk_norm", "cross_attn_norm", "image_dim", "image_kv_proj")


def check_dit_matches(found: WanDiTConfig, expected: WanDiTConfig, what: str) -> None:
    """A one-line CheckpointError when a DiT file is not the model the folder's config describes."""
    # t2v / ti2v: the same weights (the folder's config tells which)
    diff = [f for f in _SHAPE_FIELDS if f != "model_type" and getattr(found, f) != getattr(expected, f)]
    if weights_type(found.model_type) != weights_type(expected.model_type):
        diff.insert(0, "model_type")
    if diff:
        detail = ", ".join(f"{f} {getattr(found, f)} vs {getattr(expected, f)}" for f in diff[:4])
        raise CheckpointError(f"{what} is a {describe_config(found)}; the folder's config is a "
                              f"{describe_config(expected)} ({detail})")


def diffusers_dit_keys(cfg: WanDiTConfig) -> list[str]:
    """The state-dict keys of diffusers' WanTransformer3DModel for a config (as diffusers names them)."""
    wb = ("weight", "bias")
    keys = ["scale_shift_table", *(f"patch_embedding.{p}" for p in wb), *(f"proj_out.{p}" for p in wb)]
    emb = [f"condition_embedder.{m}" for m in ("time_embedder.linear_1", "time_embedder.linear_2", "time_proj",
                                                  "text_embedder.linear_1", "text_embedder.linear_2")]
    if cfg.image_tokens:
        emb += [f"condition_embedder.image_embedder.{m}" for m in ("norm1", "ff.net.0.proj", "ff.net.2", "norm2")]
        if cfg.model_type == "flf2v":
            keys.append("condition_embedder.image_embedder.pos_embed")
    keys += [f"{m}.{p}" for m in emb for p in wb]
    attn = ["to_q", "to_k", "to_v", "to_out.0"]
    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        cross = attn + (["add_k_proj", "add_v_proj"] if cfg.image_tokens else [])
        keys += [b + "scale_shift_table", *(f"{b}ffn.{m}.{p}" for m in ("net.0.proj", "net.2") for p in wb)]
        keys += [f"{b}attn1.{m}.{p}" for m in attn for p in wb] + [f"{b}attn2.{m}.{p}" for m in cross for p in wb]
        if cfg.qk_norm:
            norms = ["norm_q", "norm_k"] + (["norm_added_k"] if cfg.image_tokens else [])
            keys += [f"{b}attn1.{n}.weight" for n in norms[:2]] + [f"{b}attn2.{n}.weight" for n in norms]
        if cfg.cross_attn_norm:
            keys += [f"{b}norm2.{p}" for p in wb]
    return keys


def diffusers_key_table(cfg: WanDiTConfig) -> dict[str, str]:
    """{official key: diffusers key}: `dit_key_from_diffusers` inverted over `diffusers_dit_keys(cfg)`."""
    table: dict[str, str] = {}
    for key in diffusers_dit_keys(cfg):
        official = dit_key_from_diffusers(key)
        if official is None or official in table:
            raise CheckpointError(f"diffusers key {key} has no unique official name ({official}); the rename table is incomplete")
        table[official] = key
    return table


def diffusers_config_json(cfg: WanDiTConfig) -> dict:
    """config.json of diffusers' WanTransformer3DModel (text_len, not a diffusers field, only if not 512).

    The tokens per image of an i2v model (clip_tokens) are not written: diffusers has no such field
    (the image encoder's config tells it); flf2v's are, as pos_embed_seq_len."""
    image = cfg.has_image_branch
    out = {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.1", "patch_size": list(cfg.patch_size),
           "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.head_dim, "in_channels": cfg.in_dim,
           "out_channels": cfg.out_dim, "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim,
           "num_layers": cfg.num_layers, "cross_attn_norm": cfg.cross_attn_norm,
           "qk_norm": "rms_norm_across_heads" if cfg.qk_norm else None, "eps": cfg.eps,
           "image_dim": cfg.image_dim if image else None,
           "added_kv_proj_dim": cfg.dim if image and cfg.image_kv_proj else None,
           "rope_max_seq_len": cfg.rope_max_seq_len,
           "pos_embed_seq_len": 2 * cfg.clip_tokens if cfg.model_type == "flf2v" else None}
    if cfg.text_len != 512:
        out["text_len"] = cfg.text_len
    return out


def parse_config(raw: Mapping[str, Any]) -> Optional[WanDiTConfig]:
    """A Wan DiT config.json in either format; None for a config of something else."""
    if not ({"num_attention_heads", "dim"} & raw.keys()):
        return None
    try:
        if "num_attention_heads" in raw:
            return WanDiTConfig.from_diffusers(raw)
        return WanDiTConfig.from_official(raw)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"not a Wan DiT config ({type(exc).__name__}: {exc})") from None


class WanDitFormat:
    """The `DitFormat` of the Wan DiT (see lightx2v.loading.dit_files)."""

    family = "wan2.1"
    anchor = "patch_embedding.weight"
    block_pattern = _OFFICIAL_BLOCK   # official block keys: a file holding only these is part of a block split
    model_class = WanModel

    def key_format(self, body: list[str]) -> Optional[str]:
        """'official' or 'diffusers' from keys with any prefix stripped; None if neither."""
        if any(_OFFICIAL_BLOCK.match(k) for k in body):
            return "official"
        if any(_DIFFUSERS_BLOCK.match(k) for k in body):
            return "diffusers"
        return None

    key_from_diffusers = staticmethod(dit_key_from_diffusers)
    config_from_shapes = staticmethod(dit_config_from_state_dict)
    check_matches = staticmethod(check_dit_matches)
    describe = staticmethod(describe_config)
    diffusers_key_table = staticmethod(diffusers_key_table)
    diffusers_config = staticmethod(diffusers_config_json)
    parse_config = staticmethod(parse_config)

    @staticmethod
    def with_given(found: WanDiTConfig, given: WanDiTConfig) -> WanDiTConfig:
        """The config read off shapes, completed by a config file's fields shapes cannot tell."""
        kept = dict(num_heads=given.num_heads, text_len=given.text_len, eps=given.eps,
                    rope_max_seq_len=given.rope_max_seq_len)
        if found.model_type == "i2v" and found.has_image_branch:
            kept["clip_tokens"] = given.clip_tokens  # tokens per image: told by the image encoder, not the tensors
        if weights_type(found.model_type) == weights_type(given.model_type):
            kept["model_type"] = given.model_type  # t2v / ti2v: the weights cannot tell
        return dataclasses.replace(found, **kept)

    @staticmethod
    def guessed_fields(cfg: WanDiTConfig) -> str:
        return f"num_heads {cfg.num_heads} (128-wide heads), text_len and eps"

    @staticmethod
    def official_config(cfg: WanDiTConfig) -> dict:
        return cfg.to_official()

    @staticmethod
    def build(cfg: WanDiTConfig) -> nn.Module:
        return WanModel(cfg)

    @staticmethod
    def keep_in_fp32() -> tuple[str, ...]:
        return WanModel._keep_in_fp32


WAN_DIT_FORMAT = WanDitFormat()
