"""The HunyuanVideo-1.5 DiT's architecture config: `HunyuanVideo15DiTConfig`, from either config.json.

Design: one frozen dataclass in the official field names' meaning (tencent/HunyuanVideo-1.5,
hyvideo/models/transformers/hunyuanvideo_1_5_transformer.py, `HunyuanVideo_1_5_DiffusionTransformer`),
defaults = the released 8.3B model (transformer/480p_t2v/config.json ...: hidden 2048, 16 heads,
54 double-stream blocks, no single-stream block, Qwen2.5-VL 3584-wide text states, byT5 glyph
tokens 1472 wide, SigLIP 1152-wide vision states, 32 latent channels concatenated with the image
condition: 2 * 32 + 1 = 65 input channels).

`from_official(cfg, shapes=)` and `from_diffusers(cfg, shapes=)` honour every field the file states
or refuse it by name (a value this model does not implement, e.g. single-stream blocks, a guidance
embedding, is refused naming the field and what is supported); a field the file omits is read off
the tensor shapes when `shapes` is given (`fields_from_shapes`), else it keeps the released default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from lightx2v.errors import CheckpointError

if TYPE_CHECKING:
    from lightx2v.ops.ssta import SSTAConfig

BYT5_HIDDEN = 2048  # the byT5 mapper's hidden width: fixed in the official ByT5Mapper and in diffusers


@dataclass(frozen=True)
class HunyuanVideo15DiTConfig:
    """The DiT's architecture. `in_channels` is the latent width; with `concat_condition` the patch
    embedding takes 2 * in_channels + 1 channels (latents, image-condition latents, mask)."""

    in_channels: int = 32
    concat_condition: bool = True
    out_channels: int = 32
    hidden_size: int = 2048
    heads_num: int = 16
    mlp_width_ratio: float = 4.0
    num_layers: int = 54              # official mm_double_blocks_depth; diffusers num_layers
    num_refiner_layers: int = 2       # the text token refiner's blocks (fixed at 2 in the official code)
    patch_size: tuple[int, int, int] = (1, 1, 1)
    rope_dim_list: tuple[int, int, int] = (16, 56, 56)
    rope_theta: float = 256.0
    qk_norm: bool = True
    qkv_bias: bool = True
    text_states_dim: int = 3584       # Qwen2.5-VL-7B hidden states
    glyph_byT5_v2: bool = True        # the byT5 glyph tokens input (byt5_in)
    byt5_dim: int = 1472              # byT5 (Glyph-SDXL-v2) hidden states
    vision_projection: bool = True    # the SigLIP image tokens input (vision_in), used by I2V
    vision_states_dim: int = 1152
    use_cond_type_embedding: bool = True
    use_meanflow: bool = False        # a second timestep embedding (time_r_in) for MeanFlow models
    # informational (the reference's training target; the sampling defaults are the pipeline's)
    ideal_resolution: str | None = None
    ideal_task: str | None = None
    # the reference's attention kernel ("flash", or "flex-block-attn": its sparse SSTA, with
    # attn_param, read by `sparse_attention()`: the DiT gives its blocks' attention an SSTA layout)
    attn_mode: str = "flash"
    attn_param: Any = None

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads_num:
            raise CheckpointError(f"hidden_size {self.hidden_size} is not divisible by heads_num {self.heads_num}")
        if sum(self.rope_dim_list) != self.head_dim or any(d % 2 for d in self.rope_dim_list):
            raise CheckpointError(f"rope_dim_list {list(self.rope_dim_list)} must be even and sum to the head dim "
                                  f"{self.head_dim}")
        self.sparse_attention()  # an attn_param we cannot run is refused at load, naming the field

    def sparse_attention(self) -> SSTAConfig | None:
        """The SSTA parameters of a DiT trained with it (attn_mode "flex-block-attn"), else None."""
        return ssta_config(self.attn_param) if self.attn_mode == "flex-block-attn" else None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads_num

    @property
    def num_heads(self) -> int:
        """The attention heads (what a Ulysses degree must divide: lightx2v.runtime.parallel)."""
        return self.heads_num

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_width_ratio)

    @property
    def patch_in_channels(self) -> int:
        """Channels of the patch embedding's input: latents (+ condition latents + mask)."""
        return 2 * self.in_channels + 1 if self.concat_condition else self.in_channels

    # ------------------------------------------------------------ official config.json

    @classmethod
    def from_official(cls, cfg: Mapping[str, Any], shapes: Mapping[str, Sequence[int]] | None = None,
                      where: str = "transformer config.json") -> "HunyuanVideo15DiTConfig":
        """From the official transformer/<variant>/config.json (keys of HunyuanVideo_1_5_DiffusionTransformer)."""
        kw: dict[str, Any] = {}
        for key, value in cfg.items():
            if key.startswith("_"):
                continue  # metadata (_class_name, _diffusers_version)
            if key in _OFFICIAL_FIXED:
                if _norm(value) != _norm(_OFFICIAL_FIXED[key]):
                    raise CheckpointError(f"{where}: {key} = {value!r} is not supported; HunyuanVideo-1.5 "
                                          f"has {_OFFICIAL_FIXED[key]!r}")
            elif key in _OFFICIAL_RENAME:
                kw[_OFFICIAL_RENAME[key]] = value
            else:
                raise CheckpointError(f"{where}: unknown field {key!r}; supported: "
                                      f"{', '.join(sorted([*_OFFICIAL_RENAME, *_OFFICIAL_FIXED]))}")
        if "vision_projection" in kw:
            if kw["vision_projection"] not in ("linear", "none", None):
                raise CheckpointError(f"{where}: vision_projection = {kw['vision_projection']!r} is not supported; "
                                      "expected 'linear' or 'none'")
            kw["vision_projection"] = kw["vision_projection"] == "linear"
        return _build(cls, kw, shapes, where)

    def to_official(self) -> dict[str, Any]:
        """The official config.json's fields for this config (with the fixed ones)."""
        inv = {v: k for k, v in _OFFICIAL_RENAME.items()}
        out = {inv[f.name]: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in inv}
        out["vision_projection"] = "linear" if self.vision_projection else "none"
        out["patch_size"], out["rope_dim_list"] = list(self.patch_size), list(self.rope_dim_list)
        return {**_OFFICIAL_FIXED, **out}

    # ------------------------------------------------------------ diffusers config.json

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any], shapes: Mapping[str, Sequence[int]] | None = None,
                       where: str = "transformer/config.json") -> "HunyuanVideo15DiTConfig":
        """From a diffusers HunyuanVideo15Transformer3DModel config.json. diffusers states the patch
        embedding's input width (`in_channels` 65): 2 * out_channels + 1 is read as the latent width
        concatenated with the image condition (the official concat_condition), else as the latent width."""
        unknown = [k for k in cfg if not k.startswith("_") and k not in _DIFFUSERS_FIELDS]
        if unknown:
            raise CheckpointError(f"{where}: unknown field {unknown[0]!r}; supported: {', '.join(_DIFFUSERS_FIELDS)}")
        if cfg.get("qk_norm", "rms_norm") != "rms_norm":
            raise CheckpointError(f"{where}: qk_norm = {cfg['qk_norm']!r} is not supported; expected 'rms_norm'")
        kw: dict[str, Any] = {}
        if "num_attention_heads" in cfg:
            kw["heads_num"] = cfg["num_attention_heads"]
        if "attention_head_dim" in cfg or "num_attention_heads" in cfg:
            heads = cfg.get("num_attention_heads", cls.heads_num)
            kw["hidden_size"] = heads * cfg.get("attention_head_dim", cls.hidden_size // cls.heads_num)
        simple = {"out_channels": "out_channels", "num_layers": "num_layers", "num_refiner_layers": "num_refiner_layers",
                  "mlp_ratio": "mlp_width_ratio", "text_embed_dim": "text_states_dim", "text_embed_2_dim": "byt5_dim",
                  "image_embed_dim": "vision_states_dim", "rope_theta": "rope_theta", "rope_axes_dim": "rope_dim_list",
                  "use_meanflow": "use_meanflow", "task_type": "ideal_task"}
        kw.update({ours: cfg[theirs] for theirs, ours in simple.items() if theirs in cfg})
        if "patch_size" in cfg or "patch_size_t" in cfg:
            p, pt = cfg.get("patch_size", 1), cfg.get("patch_size_t", 1)
            kw["patch_size"] = (pt, p, p)
        if "target_size" in cfg:
            kw["ideal_resolution"] = _TARGET_SIZES.get(cfg["target_size"], f"{cfg['target_size']}px")
        if "in_channels" in cfg:
            n, out = cfg["in_channels"], cfg.get("out_channels", cls.out_channels)
            kw["concat_condition"] = n == 2 * out + 1
            kw["in_channels"] = out if kw["concat_condition"] else n
        return _build(cls, kw, shapes, where)


# official keys -> our field names (identity except the block depth and the dual-purpose ones)
_OFFICIAL_RENAME = {
    "in_channels": "in_channels", "concat_condition": "concat_condition", "out_channels": "out_channels",
    "hidden_size": "hidden_size", "heads_num": "heads_num", "mlp_width_ratio": "mlp_width_ratio",
    "mm_double_blocks_depth": "num_layers", "patch_size": "patch_size", "rope_dim_list": "rope_dim_list",
    "rope_theta": "rope_theta", "qk_norm": "qk_norm", "qkv_bias": "qkv_bias", "text_states_dim": "text_states_dim",
    "glyph_byT5_v2": "glyph_byT5_v2", "vision_projection": "vision_projection",
    "vision_states_dim": "vision_states_dim", "use_cond_type_embedding": "use_cond_type_embedding",
    "use_meanflow": "use_meanflow", "ideal_resolution": "ideal_resolution", "ideal_task": "ideal_task",
    "attn_mode": "attn_mode", "attn_param": "attn_param",
}
# official keys whose only supported value is the released one (the code paths the releases never use)
_OFFICIAL_FIXED = {
    "mm_single_blocks_depth": 0, "mlp_act_type": "gelu_tanh", "qk_norm_type": "rms", "guidance_embed": False,
    "text_projection": "single_refiner", "use_attention_mask": True, "text_states_dim_2": None,
    "text_pool_type": None, "is_reshape_temporal_channels": False,
}
# every argument of diffusers' HunyuanVideo15Transformer3DModel (diffusers 0.36 - 0.42)
_DIFFUSERS_FIELDS = (
    "in_channels", "out_channels", "num_attention_heads", "attention_head_dim", "num_layers", "num_refiner_layers",
    "mlp_ratio", "patch_size", "patch_size_t", "qk_norm", "text_embed_dim", "text_embed_2_dim", "image_embed_dim",
    "rope_theta", "rope_axes_dim", "target_size", "task_type", "use_meanflow",
)
_TARGET_SIZES = {640: "480p", 960: "720p"}


# attn_param (the reference's HunyuanVideo_1_5_DiffusionTransformer defaults when a key is absent) -> SSTAConfig
_SSTA_ONLY = {"attn_sparse_type": "ssta", "ssta_threshold": 0.0, "ssta_adaptive_pool": None, "attn_use_text_mask": 1}
_SSTA_KEYS = ("win_size", "win_type", "win_ratio", "tile_size", "ssta_topk", "ssta_lambda", "ssta_sampling_type",
              "attn_pad_type", "attn_mask_share_within_head", *_SSTA_ONLY)
_SSTA_RUNTIME = ("thw", "layer-name")  # written into attn_param by the reference's forward, not settings


def ssta_config(param: Mapping[str, Any] | None, where: str = "transformer config.json") -> SSTAConfig:
    """The SSTA settings of an official attn_param (None: the reference's defaults); a value we do not
    implement (another sparse type, a threshold, adaptive pooling, unmasked text) is refused by name."""
    from lightx2v.ops.ssta import SSTAConfig  # (torch: imported only for a sparse DiT)

    p = dict(param or {})
    unknown = [k for k in p if k not in _SSTA_KEYS and k not in _SSTA_RUNTIME]
    if unknown:
        raise CheckpointError(f"{where}: attn_param field {unknown[0]!r} is unknown; supported: {', '.join(_SSTA_KEYS)}")
    for key, only in _SSTA_ONLY.items():
        if key in p and p[key] != only and not (key == "attn_use_text_mask" and p[key] is True):
            raise CheckpointError(f"{where}: attn_param {key} = {p[key]!r} is not supported; expected {only!r}")
    win = p.get("win_size", [[3, 3, 3]])
    win = win[0] if win and isinstance(win[0], (list, tuple)) else win  # the reference reads win_size[0]
    if p.get("win_type", "fixed") not in ("fixed", "hybrid"):
        raise CheckpointError(f"{where}: attn_param win_type = {p['win_type']!r}; expected 'fixed' or 'hybrid'")
    try:
        return SSTAConfig(tile=tuple(int(x) for x in p.get("tile_size", (6, 8, 8))), window=tuple(int(x) for x in win),
                          topk=int(p.get("ssta_topk", 64)), lam=float(p.get("ssta_lambda", 0.7)),
                          sampling=p.get("ssta_sampling_type", "importance"), pad=p.get("attn_pad_type", "zero"),
                          share_heads=bool(p.get("attn_mask_share_within_head", 0)),
                          dense_every=int(p.get("win_ratio", 10)) if p.get("win_type") == "hybrid" else 0)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: attn_param: {exc}") from None


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _build(cls: type[HunyuanVideo15DiTConfig], kw: dict, shapes, where: str) -> HunyuanVideo15DiTConfig:
    if shapes is not None:
        for k, v in fields_from_shapes(shapes).items():
            kw.setdefault(k, v)  # the file's statement wins; shapes only fill what it omits
    for key in ("patch_size", "rope_dim_list"):
        if key in kw:
            kw[key] = tuple(int(x) for x in kw[key])
    if "rope_theta" in kw:
        kw["rope_theta"] = float(kw["rope_theta"])
    try:
        return cls(**kw)
    except TypeError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


_DOUBLE = re.compile(r"double_blocks\.(\d+)\.")
_REFINER = re.compile(r"txt_in\.individual_token_refiner\.blocks\.(\d+)\.")


def fields_from_shapes(shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """The config fields an official-keyed state dict's tensor shapes tell (name -> shape)."""
    if "img_in.proj.weight" not in shapes:
        raise CheckpointError("not a HunyuanVideo-1.5 DiT: no img_in.proj.weight tensor")
    hidden, n_in, *patch = shapes["img_in.proj.weight"]
    out: dict[str, Any] = {"hidden_size": hidden, "patch_size": tuple(patch)}
    if "final_layer.linear.weight" in shapes:
        out["out_channels"] = shapes["final_layer.linear.weight"][0] // math.prod(patch)
        out["concat_condition"] = n_in == 2 * out["out_channels"] + 1
        out["in_channels"] = out["out_channels"] if out["concat_condition"] else n_in
    if "double_blocks.0.img_attn_q_norm.weight" in shapes:
        out["heads_num"] = hidden // shapes["double_blocks.0.img_attn_q_norm.weight"][0]
    out["qk_norm"] = "double_blocks.0.img_attn_q_norm.weight" in shapes
    out["qkv_bias"] = "double_blocks.0.img_attn_q.bias" in shapes
    if "double_blocks.0.img_mlp.fc1.weight" in shapes:
        out["mlp_width_ratio"] = shapes["double_blocks.0.img_mlp.fc1.weight"][0] / hidden
    out["num_layers"] = len({m.group(1) for k in shapes if (m := _DOUBLE.match(k))})
    out["num_refiner_layers"] = len({m.group(1) for k in shapes if (m := _REFINER.match(k))})
    if "txt_in.input_embedder.weight" in shapes:
        out["text_states_dim"] = shapes["txt_in.input_embedder.weight"][1]
    out["glyph_byT5_v2"] = "byt5_in.fc1.weight" in shapes
    if out["glyph_byT5_v2"]:
        out["byt5_dim"] = shapes["byt5_in.fc1.weight"][1]
    out["vision_projection"] = "vision_in.proj.1.weight" in shapes
    if out["vision_projection"]:
        out["vision_states_dim"] = shapes["vision_in.proj.1.weight"][1]
    out["use_cond_type_embedding"] = "cond_type_embedding.weight" in shapes
    out["use_meanflow"] = "time_r_in.mlp.0.weight" in shapes
    return out
