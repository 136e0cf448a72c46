"""The Qwen-Image DiT's file format, for the generic DiT-file code (lightx2v.loading.dit_files).

Design: the released transformer/ folders use diffusers' names, which are this model's own names
(`QwenImageDiT.key_from_diffusers` is the identity), so there is one key format, reported as
"official" ("comfyui" when the keys carry a prefix such as `model.diffusion_model.`). The anchor
`img_in.weight` is present once in every Qwen-Image DiT (Wan's DiT names its patch embedding
otherwise). The config is read off the tensor shapes; `axes_dims_rope` and `zero_cond_t` cannot be
read there and come from the folder's transformer/config.json (`with_given`).

Single files (`--dit-path`, lightx2v.models.qwen_image.spec.with_dit_file) need nothing more: LightX2V's
fp8 files keep these names with no prefix, float8 block linears and a `<name>.weight_scale` [out, 1]
(w8a8-fp8); ComfyUI's put them under `model.diffusion_model.` (bf16, a plain fp8 cast, or scaled fp8
with `scale_weight`), which the generic reader strips and renames (tests/loading/test_qwen_image_dit_files.py).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Union

from torch import Tensor, nn

from lightx2v.errors import CheckpointError
from lightx2v.models.qwen_image.dit import QwenImageDiT
from lightx2v.models.qwen_image.dit_config import QwenImageDiTConfig

_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.")
# what shapes tell: compared between a DiT file and the folder's config
_SHAPE_FIELDS = ("patch_size", "in_channels", "out_channels", "num_layers", "attention_head_dim",
                 "num_attention_heads", "joint_attention_dim")


def guess_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE channels per (frame, height, width) axis when no config says: the released split (16, 56,
    56) for 128-wide heads, the same proportions (even, summing to head_dim) otherwise."""
    t = 2 * max(1, head_dim // 16)
    hw = (head_dim - t) // 2 // 2 * 2
    return (head_dim - 2 * hw, hw, hw)


def config_from_shapes(sd: Mapping[str, Union[Tensor, tuple[int, ...]]], *, what: str = "DiT checkpoint",
                       base: Optional[QwenImageDiTConfig] = None) -> QwenImageDiTConfig:
    """QwenImageDiTConfig of a state dict in this model's names (tensors or shapes)."""
    shapes = {k: tuple(v.shape) if isinstance(v, Tensor) else tuple(v) for k, v in sd.items()}

    def need(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointError(f"{what} has no tensor {key}; is it a complete Qwen-Image DiT?")
        return shapes[key]

    dim, in_channels = need("img_in.weight")
    blocks = sorted({int(m[1]) for k in shapes if (m := _BLOCK.match(k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise CheckpointError(f"{what}: its transformer_blocks are not numbered 0..n-1 ({len(blocks)} found)")
    head_dim = need("transformer_blocks.0.attn.norm_q.weight")[0]
    out_features = need("proj_out.weight")[0]
    patch = base.patch_size if base is not None else 2
    return QwenImageDiTConfig(
        patch_size=patch, in_channels=in_channels, out_channels=out_features // patch**2, num_layers=len(blocks),
        attention_head_dim=head_dim, num_attention_heads=dim // head_dim,
        joint_attention_dim=need("txt_in.weight")[1],
        axes_dims_rope=base.axes_dims_rope if base is not None else guess_axes(head_dim),
        zero_cond_t=base.zero_cond_t if base is not None else False,
    )


def check_matches(found: QwenImageDiTConfig, expected: QwenImageDiTConfig, what: str) -> None:
    for name in _SHAPE_FIELDS:
        a, b = getattr(found, name), getattr(expected, name)
        if a != b:
            raise CheckpointError(f"{what} is a Qwen-Image DiT with {name} {a}; the model folder's has {b}")


def describe(cfg: QwenImageDiTConfig) -> str:
    size = "20B " if (cfg.dim, cfg.num_layers) == (3072, 60) else ""
    return f"Qwen-Image {size}DiT (dim {cfg.dim}, {cfg.num_layers} layers)"


def parse_config(raw: Mapping[str, Any]) -> Optional[QwenImageDiTConfig]:
    """A transformer/config.json of a QwenImageTransformer2DModel; None for another file."""
    if raw.get("_class_name") != "QwenImageTransformer2DModel":
        return None
    return QwenImageDiTConfig.from_diffusers(raw)


class QwenImageDitFormat:
    """The `DitFormat` of the Qwen-Image DiT (see lightx2v.loading.dit_files)."""

    family = "qwen-image"
    anchor = "img_in.weight"
    block_pattern = _BLOCK
    model_class = QwenImageDiT

    def key_format(self, body: list[str]) -> Optional[str]:
        return "official" if any(_BLOCK.match(k) for k in body) else None

    key_from_diffusers = staticmethod(QwenImageDiT.key_from_diffusers)
    config_from_shapes = staticmethod(config_from_shapes)
    check_matches = staticmethod(check_matches)
    describe = staticmethod(describe)
    parse_config = staticmethod(parse_config)

    @staticmethod
    def with_given(found: QwenImageDiTConfig, given: QwenImageDiTConfig) -> QwenImageDiTConfig:
        return dataclasses.replace(found, axes_dims_rope=given.axes_dims_rope, zero_cond_t=given.zero_cond_t,
                                   patch_size=given.patch_size)

    @staticmethod
    def guessed_fields(cfg: QwenImageDiTConfig) -> str:
        return f"axes_dims_rope {list(cfg.axes_dims_rope)} and zero_cond_t"

    @staticmethod
    def diffusers_key_table(cfg: QwenImageDiTConfig) -> dict[str, str]:
        import torch

        with torch.device("meta"):  # names only: the identity table
            return {k: k for k in QwenImageDiT(cfg).state_dict()}

    @staticmethod
    def diffusers_config(cfg: QwenImageDiTConfig) -> dict:
        return {"_class_name": "QwenImageTransformer2DModel", **cfg.to_diffusers()}

    official_config = diffusers_config

    @staticmethod
    def build(cfg: QwenImageDiTConfig) -> nn.Module:
        # -- qwen-image 2.1: its own DiT (dit21.py; the memory estimate builds it on meta through here) --
        from lightx2v.models.qwen_image.dit21 import QwenImage21DiT, QwenImage21DiTConfig

        if isinstance(cfg, QwenImage21DiTConfig):
            return QwenImage21DiT(cfg)
        return QwenImageDiT(cfg)

    @staticmethod
    def keep_in_fp32() -> tuple[str, ...]:
        return QwenImageDiT._keep_in_fp32


QWEN_IMAGE_DIT_FORMAT = QwenImageDitFormat()
