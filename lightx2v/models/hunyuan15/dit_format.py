"""The HunyuanVideo-1.5 DiT's file format, for the generic DiT-file code (lightx2v.loading.dit_files).

Design: the model's names are the official ones (`img_in.proj.weight`, `double_blocks.{i}.*`), the
anchor `img_in.proj.weight` appears once in every official-keyed HunyuanVideo-1.5 DiT. The diffusers
files are more than a rename (three refiner tensors fuse into one, the head's modulation halves
swap: dit_keys.py), which the generic per-key path cannot do, so this format reads official keys
only, and the pipeline loads a diffusers folder's transformer/ itself (`load_folder_dit`: the whole
state dict through `state_dict_from_diffusers`, quantized on load as `build_dit` would).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from lightx2v.errors import CheckpointError
from lightx2v.models.hunyuan15.dit import HunyuanVideo15DiT
from lightx2v.models.hunyuan15.dit_config import HunyuanVideo15DiTConfig, fields_from_shapes
from lightx2v.models.hunyuan15.lora_keys import lora_aliases

_BLOCK = re.compile(r"double_blocks\.(\d+)\.")
# what shapes tell: compared between a DiT file and the folder's config
_SHAPE_FIELDS = ("hidden_size", "heads_num", "num_layers", "in_channels", "out_channels", "concat_condition",
                 "patch_size", "text_states_dim", "use_meanflow")


def config_from_shapes(sd: Mapping[str, Union[Tensor, tuple[int, ...]]], *, what: str = "DiT checkpoint",
                       base: Optional[HunyuanVideo15DiTConfig] = None) -> HunyuanVideo15DiTConfig:
    shapes = {k: tuple(v.shape) if isinstance(v, Tensor) else tuple(v) for k, v in sd.items()}
    fields = fields_from_shapes(shapes)
    head = fields["hidden_size"] // fields.get("heads_num", HunyuanVideo15DiTConfig.heads_num)
    if head != sum(HunyuanVideo15DiTConfig.rope_dim_list) and head % 2 == 0:
        # shapes do not tell the RoPE split; another head width than the release's gets an even split
        # (only a placeholder: the model folder's config replaces it, `with_given`)
        side = 2 * (head // 6)
        fields["rope_dim_list"] = (head - 2 * side, side, side)
    try:
        return HunyuanVideo15DiTConfig(**fields)
    except TypeError as exc:
        raise CheckpointError(f"{what}: {exc}") from None


def check_matches(found: HunyuanVideo15DiTConfig, expected: HunyuanVideo15DiTConfig, what: str) -> None:
    for name in _SHAPE_FIELDS:
        a, b = getattr(found, name), getattr(expected, name)
        if a != b:
            raise CheckpointError(f"{what} is a HunyuanVideo-1.5 DiT with {name} {a}; the model folder's has {b}")


def describe(cfg: HunyuanVideo15DiTConfig) -> str:
    size = "8.3B " if (cfg.hidden_size, cfg.num_layers) == (2048, 54) else ""
    res = f", {cfg.ideal_resolution}" if cfg.ideal_resolution else ""
    return f"HunyuanVideo-1.5 {size}DiT (hidden {cfg.hidden_size}, {cfg.num_layers} blocks{res})"


def parse_config(raw: Mapping[str, Any]) -> Optional[HunyuanVideo15DiTConfig]:
    """A transformer/config.json of a HunyuanVideo15Transformer3DModel; None for another file."""
    if raw.get("_class_name") != "HunyuanVideo15Transformer3DModel":
        return None
    return HunyuanVideo15DiTConfig.from_diffusers(raw)


class Hunyuan15DitFormat:
    """The `DitFormat` of the HunyuanVideo-1.5 DiT (see lightx2v.loading.dit_files)."""

    family = "hunyuanvideo-1.5"
    anchor = "img_in.proj.weight"
    block_pattern = _BLOCK
    model_class = HunyuanVideo15DiT

    def key_format(self, body: list[str]) -> Optional[str]:
        return "official" if any(_BLOCK.match(k) for k in body) else None

    key_from_diffusers = staticmethod(HunyuanVideo15DiT.key_from_diffusers)
    # LoRA names that are not one-to-one renames (diffusers' refiner q/k/v and head, ComfyUI's fused qkv)
    lora_aliases = staticmethod(lora_aliases)
    config_from_shapes = staticmethod(config_from_shapes)
    check_matches = staticmethod(check_matches)
    describe = staticmethod(describe)
    parse_config = staticmethod(parse_config)

    @staticmethod
    def with_given(found: HunyuanVideo15DiTConfig, given: HunyuanVideo15DiTConfig) -> HunyuanVideo15DiTConfig:
        # shapes cannot tell the RoPE split and theta, nor the informational fields
        return dataclasses.replace(found, rope_dim_list=given.rope_dim_list, rope_theta=given.rope_theta,
                                   ideal_resolution=given.ideal_resolution, ideal_task=given.ideal_task)

    @staticmethod
    def guessed_fields(cfg: HunyuanVideo15DiTConfig) -> str:
        return f"rope_dim_list {list(cfg.rope_dim_list)} and rope_theta {cfg.rope_theta}"

    @staticmethod
    def diffusers_key_table(cfg: HunyuanVideo15DiTConfig) -> dict[str, str]:
        raise CheckpointError("HunyuanVideo-1.5 DiT keys do not map one to one to diffusers' (the refiner's q, k, v "
                              "are one official tensor); converting to diffusers is not supported yet")

    @staticmethod
    def diffusers_config(cfg: HunyuanVideo15DiTConfig) -> dict:
        raise CheckpointError("converting a HunyuanVideo-1.5 DiT to the diffusers layout is not supported yet")

    @staticmethod
    def official_config(cfg: HunyuanVideo15DiTConfig) -> dict:
        return cfg.to_official()

    @staticmethod
    def build(cfg: HunyuanVideo15DiTConfig) -> nn.Module:
        return HunyuanVideo15DiT(cfg)

    @staticmethod
    def keep_in_fp32() -> tuple[str, ...]:
        return HunyuanVideo15DiT._keep_in_fp32


HUNYUAN15_DIT_FORMAT = Hunyuan15DitFormat()


def load_folder_dit(files, cfg: HunyuanVideo15DiTConfig, *, device, dtype: torch.dtype,
                    quant: Optional[str] = None) -> nn.Module:
    """The DiT of a diffusers folder's transformer/ (diffusers keys, mmap): built on meta, the state dict
    converted to official names, the declared linears quantized as they are read when `quant` is given."""
    from lightx2v.loading.dit_files import load_dit_weights
    from lightx2v.models.hunyuan15.dit_keys import state_dict_from_diffusers
    from lightx2v.models.wan.spec import _read
    from lightx2v.quant import apply_quant

    with torch.device("meta"):
        model = HunyuanVideo15DiT(cfg)
    if quant is not None:
        apply_quant(model, quant, compute_dtype=dtype)
    load_dit_weights(model, state_dict_from_diffusers(_read(files)), dtype=dtype, device=device, what="transformer")
    return model.eval().requires_grad_(False)


# the condition projections LightX2V reads from the folder's transformer/<variant>/ rather than from its DiT
# files (lightx2v/models/input_encoders/hf/hunyuan15/byt5/model.py and siglip/model.py in ModelTC/LightX2V):
# its distilled / quantized single files may lack them, and then the folder's are used, as there
FOLDER_PARTS = ("byt5_in.", "vision_in.")


def load_user_dit(mc, *, device, dtype: torch.dtype, quant: Optional[str] = None) -> nn.Module:
    """The DiT of a --dit-path file (`mc.dit_source`) into the folder's architecture; the condition
    projections the file lacks (`FOLDER_PARTS`) come from the folder's own DiT (`mc.files["dit_folder"]`)."""
    from lightx2v.loading.components import load_dit
    from lightx2v.loading.dit_files import load_dit_weights, prepare_for_quantized, read_dit_state_dict
    from lightx2v.quant import apply_quant

    src = mc.dit_source
    with torch.device("meta"):
        model = HunyuanVideo15DiT(mc.dit)
    names = {k for k, _ in model.named_parameters()}
    lacking = [p for p in FOLDER_PARTS if any(k.startswith(p) for k in names) and not any(
        k.startswith(p) for k in src.shapes)]
    if not lacking or "dit_folder" not in mc.files:
        return load_dit(mc, device, dtype, quant=quant)
    if quant is not None and src.quant is not None and quant != src.quant:
        from lightx2v.errors import InputError

        raise InputError(f"{src.path} is already quantized ({src.quant}); it cannot be loaded as {quant}")
    prepare_for_quantized(model, src, dtype=dtype)
    if quant is not None and src.quant is None:
        apply_quant(model, quant, compute_dtype=dtype)
    sd = dict(read_dit_state_dict(src))
    sd.update({k: v for k, v in _folder_state_dict(mc).items() if k.startswith(tuple(lacking))})
    load_dit_weights(model, sd, dtype=dtype, device=device, what=f"DiT {src.path} + the folder's {', '.join(lacking)}")
    return model.eval().requires_grad_(False)


def _folder_state_dict(mc) -> dict:
    """The folder's own DiT in official keys (mmap)."""
    from lightx2v.models.hunyuan15.dit_keys import state_dict_from_diffusers
    from lightx2v.models.wan.spec import _read

    sd = _read(mc.files["dit_folder"])
    return state_dict_from_diffusers(sd) if mc.layout == "diffusers" else dict(sd)
