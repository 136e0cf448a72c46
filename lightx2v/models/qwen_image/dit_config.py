"""The Qwen-Image MMDiT's architecture config: `QwenImageDiTConfig`, read from transformer/config.json.

Design: the released checkpoints (Qwen/Qwen-Image, -2512, -Edit, -Edit-2509, -Edit-2511) ship only
the diffusers layout, so the field names here are diffusers' `QwenImageTransformer2DModel` arguments
and `from_diffusers(cfg)` reads the file as it is. Every field the file states is honoured or refused
by name; the defaults are the released 20B model (60 dual-stream blocks, width 24 x 128 = 3072).

Fields diffusers accepts but whose variant this step does not build are refused when set
(`use_additional_t_cond`, `use_layer3d_rope`: Qwen-Image-Layered; `guidance_embeds`: diffusers'
QwenImage time embedding cannot take a guidance input, so no released model sets it).
`pooled_projection_dim` (768 in Qwen/Qwen-Image's config.json) is not an argument of diffusers'
class: diffusers ignores it, and so does this reader (it names nothing in the model).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from lightx2v.errors import CheckpointError

# keys of transformer/config.json that describe nothing in the model (diffusers' metadata, and the
# unused pooled_projection_dim of Qwen/Qwen-Image's file)
IGNORED_KEYS = frozenset({"pooled_projection_dim"})
# diffusers arguments of variants not built here: the value that means "off", and the variant it is
REFUSED_IF_SET = {
    "guidance_embeds": (False, "a guidance-distilled variant (diffusers' QwenImage time embedding has no guidance input)"),
    "use_additional_t_cond": (False, "Qwen-Image-Layered's extra timestep condition (not supported yet)"),
    "use_layer3d_rope": (False, "Qwen-Image-Layered's layer RoPE (not supported yet)"),
}


@dataclass(frozen=True, kw_only=True)
class QwenImageDiTConfig:
    """Architecture of a Qwen-Image MMDiT, in diffusers' names (the released config.json's).

    patch_size            latent pixels per token side (2: a token packs 2 x 2 latent pixels)
    in_channels           channels of a packed token (16 latent channels x 2 x 2 = 64)
    out_channels          latent channels predicted per pixel (16; None in a file: in_channels)
    num_layers            dual-stream blocks (60)
    attention_head_dim    channels per head (128); the width is num_attention_heads x attention_head_dim
    num_attention_heads   heads (24)
    joint_attention_dim   width of the text encoder's hidden states (3584: Qwen2.5-VL-7B)
    axes_dims_rope        RoPE channels per head given to the (frame, height, width) axes; sum = head dim
    zero_cond_t           Edit-2511: the condition images' tokens are modulated with the embedding of
                          timestep 0, the noisy image's with the step's timestep
    """

    patch_size: int = 2
    in_channels: int = 64
    out_channels: int = 16
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    zero_cond_t: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes_dims_rope", tuple(self.axes_dims_rope))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "zero_cond_t":
                if not isinstance(value, bool):
                    raise CheckpointError(f"zero_cond_t must be true or false, got {value!r}")
            elif f.name == "axes_dims_rope":
                if len(value) != 3 or any(_bad_int(v) or v % 2 for v in value):
                    raise CheckpointError(f"axes_dims_rope must be 3 positive even integers, got {list(value)}")
            elif _bad_int(value):
                raise CheckpointError(f"{f.name} must be a positive integer, got {value!r}")
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise CheckpointError(f"axes_dims_rope {list(self.axes_dims_rope)} must sum to attention_head_dim "
                                  f"{self.attention_head_dim} (RoPE rotates every channel of a head)")

    @property
    def num_heads(self) -> int:
        """The attention heads (what a Ulysses degree must divide: lightx2v.runtime.parallel)."""
        return self.num_attention_heads

    @property
    def dim(self) -> int:
        """The model width (both streams)."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def out_features(self) -> int:
        """Channels proj_out gives per token: out_channels x patch_size^2 (a packed token)."""
        return self.out_channels * self.patch_size**2

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "QwenImageDiTConfig":
        """The config of a transformer/config.json (diffusers' QwenImageTransformer2DModel)."""
        if cfg.get("_class_name", "QwenImageTransformer2DModel") != "QwenImageTransformer2DModel":
            raise CheckpointError(f"transformer/config.json is a {cfg['_class_name']}, expected a "
                                  "QwenImageTransformer2DModel")
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, value in cfg.items():
            if key.startswith("_") or key in IGNORED_KEYS:
                continue
            if key in REFUSED_IF_SET:
                off, what = REFUSED_IF_SET[key]
                if value != off:
                    raise CheckpointError(f"transformer/config.json sets {key} = {value!r}: {what}; expected {off!r}")
                continue
            if key not in names:
                raise CheckpointError(f"transformer/config.json has an unknown field {key!r}; a "
                                      f"QwenImageTransformer2DModel config has {sorted(names | set(REFUSED_IF_SET))}")
            kw[key] = value
        if kw.get("out_channels", 0) is None:  # diffusers: out_channels None means in_channels
            kw["out_channels"] = kw.get("in_channels", cls.in_channels)
        return cls(**kw)

    def to_diffusers(self) -> dict[str, Any]:
        """The arguments of diffusers' QwenImageTransformer2DModel for this config (tests, converters)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["axes_dims_rope"] = list(self.axes_dims_rope)
        return out


def _bad_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int) or value < 1
