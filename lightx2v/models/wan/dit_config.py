"""The Wan DiT's architecture config: `WanDiTConfig`, read from either config.json format.

Every field a config states is honoured or refused by name; an official config.json's omitted
fields are read off the DiT's tensor shapes (`from_official(cfg, shapes=...)`). Beyond the official
configurations it carries what diffusers' configs can state: the CLIP width (`image_dim`; None: no
CLIP image branch), the CLIP tokens per image, image tokens attended with the text key/value
projections (`image_kv_proj=False`, diffusers' `added_kv_proj_dim=None`) and the RoPE position bound
(`rope_max_seq_len`). The model itself is lightx2v.models.wan.dit.WanModel.

Model types (the official `model_type`): Wan2.1 t2v, i2v, flf2v; Wan2.2 t2v (the A14B experts),
i2v without the CLIP branch (I2V-A14B: `image_dim None`, conditioned on `y` only) and ti2v
(TI2V-5B: the t2v architecture on the Wan2.2 VAE's 48 latent channels, run with one timestep per
token for image-to-video). The weights cannot tell t2v from ti2v: both are "t2v-shaped"
(`weights_type`), and a 48-channel one is read as ti2v.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Mapping

from lightx2v.errors import CheckpointError
from lightx2v.models.wan.dit_blocks import CLIP_DIM

MODEL_TYPES = ("t2v", "i2v", "flf2v", "ti2v")
IMAGE_TYPES = ("i2v", "flf2v")  # the model types conditioned on an image: they take `y` (mask + image latents)
TI2V_CHANNELS = 48  # latent channels of the Wan2.2 VAE: the only DiT without an image input on them is TI2V-5B
CLIP_TOKENS = 257  # CLIP ViT-H/14 tokens per image (256 patches + class token): the default clip_tokens
ROPE_MAX_SEQ_LEN = 1024  # RoPE positions per axis of the reference and of diffusers' default rope_max_seq_len

# Keys of an official config.json besides WanDiTConfig's fields and '_' metadata: the official
# WanModel's `window_size` (only global attention, [-1, -1], exists), and the sampling keys of a
# LightX2V distilled model's config (read by lightx2v.models.wan.distill; `infer_steps` is
# ignored there, as in LightX2V).
OFFICIAL_WINDOW_SIZE = (-1, -1)
LIGHTX2V_CONFIG_KEYS = frozenset({
    "denoising_step_list", "distill_method", "num_train_timesteps", "sample_shift", "enable_cfg",
    "sample_guide_scale", "infer_steps",
})
# Every argument of diffusers' WanTransformer3DModel (diffusers 0.33 - 0.42), plus `text_len`,
# which lightx2v's converter writes when it is not 512 (diffusers has no such field).
DIFFUSERS_FIELDS = (
    "patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
    "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "image_dim", "added_kv_proj_dim",
    "rope_max_seq_len", "pos_embed_seq_len", "text_len",
)
# The fields the official-keyed weights tell (dit_config_from_state_dict), with the tensor each comes from.
_WEIGHT_SOURCES = {
    "model_type": "img_emb.* / img_emb.emb_pos tensors, patch_embedding vs head.head channels", "in_dim": "patch_embedding.weight",
    "dim": "patch_embedding.weight", "ffn_dim": "blocks.0.ffn.0.weight", "num_layers": "blocks.<i>",
    "patch_size": "patch_embedding.weight", "freq_dim": "time_embedding.0.weight",
    "text_dim": "text_embedding.0.weight", "out_dim": "head.head.weight", "qk_norm": "blocks.0.self_attn.norm_q",
    "cross_attn_norm": "blocks.0.norm3", "image_dim": "img_emb.proj.0.weight",
    "image_kv_proj": "blocks.0.cross_attn.k_img", "clip_tokens": "img_emb.emb_pos",
}
_IMAGE_FIELDS = ("image_dim", "clip_tokens", "image_kv_proj")


def weights_type(model_type: str) -> str:
    """The model type as far as the weights tell it: t2v and ti2v have the same tensors."""
    return "t2v" if model_type == "ti2v" else model_type


@dataclass(frozen=True, kw_only=True)
class WanDiTConfig:
    """Architecture of a Wan2.1 / Wan2.2 DiT, as in the official config.json (names of the official code).

    Beyond the official WanModel arguments (whose values the releases fix):
    image_dim         width of the CLIP image features (img_emb's input; 1280: ViT-H/14) of an i2v /
                      flf2v model; None: no CLIP image branch (Wan2.2 I2V-A14B; i2v only). t2v / ti2v
                      models have no image branch and leave the image fields at their defaults
    clip_tokens       CLIP tokens per conditioning image (257: ViT-H/14 at 224); flf2v's emb_pos
                      covers 2 x clip_tokens; i2v does not depend on it (see with_image_encoder)
    image_kv_proj     the cross-attention has its own key/value projections for the image tokens
                      (official k_img / v_img); False: the image tokens are put before the text
                      tokens and attended with the text k / v (diffusers' added_kv_proj_dim None)
    rope_max_seq_len  the RoPE covers positions 0 .. rope_max_seq_len - 1 on each latent grid axis
                      (the angles do not depend on it; a larger grid is refused)
    """

    model_type: str
    in_dim: int
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    image_dim: int | None = CLIP_DIM
    clip_tokens: int = CLIP_TOKENS
    image_kv_proj: bool = True
    rope_max_seq_len: int = ROPE_MAX_SEQ_LEN

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.model_type not in MODEL_TYPES:
            raise CheckpointError(f"unknown Wan model_type {self.model_type!r}; expected one of {MODEL_TYPES}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise CheckpointError(
                f"dim {self.dim} must split into {self.num_heads} heads of an even size (RoPE rotates channel pairs)"
            )
        if len(self.patch_size) != 3:
            raise CheckpointError(f"patch_size must have 3 entries (t, h, w), got {self.patch_size}")
        for name in ("image_dim", "clip_tokens", "rope_max_seq_len"):
            value = getattr(self, name)
            if name == "image_dim" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"{name} must be a positive integer, got {value!r}")
        self._check_image_fields()

    def _check_image_fields(self) -> None:
        """The image fields apply to i2v / flf2v models with a CLIP branch; image_dim None (no branch) to i2v."""
        if self.image_dim is None and self.model_type != "i2v":
            need = "; flf2v needs its CLIP image branch" if self.model_type == "flf2v" else ", which takes no image"
            raise CheckpointError(f"image_dim None is set for a {self.model_type} model{need}; "
                                  "None (no CLIP image branch) applies to i2v models only")
        if self.has_image_branch:
            return
        unused = _IMAGE_FIELDS[1:] if self.image_dim is None else _IMAGE_FIELDS
        stated = [f.name for f in fields(self) if f.name in unused and getattr(self, f.name) != f.default]
        if stated:
            what = ("an i2v model without a CLIP image branch (image_dim None)" if self.model_type == "i2v"
                    else f"a {self.model_type} model, which takes no image")
            raise CheckpointError(f"{stated[0]} {getattr(self, stated[0])!r} is set for {what}; "
                                  "it applies to i2v / flf2v models with a CLIP image branch only")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def has_image_branch(self) -> bool:
        """The DiT has the CLIP image branch (img_emb; k_img / v_img with image_kv_proj) and takes clip_fea."""
        return self.model_type in IMAGE_TYPES and self.image_dim is not None

    @property
    def needs_y(self) -> bool:
        """The DiT takes `y` (mask + image latents, concatenated to x on channels): i2v and flf2v."""
        return self.model_type in IMAGE_TYPES

    @property
    def image_tokens(self) -> int:
        """Number of CLIP context tokens: 0 (no image branch: t2v, ti2v, Wan2.2 i2v), clip_tokens (i2v),
        2 * clip_tokens (flf2v: first and last frame)."""
        if not self.has_image_branch:
            return 0
        return 2 * self.clip_tokens if self.model_type == "flf2v" else self.clip_tokens

    def with_image_encoder(self, clip: Any | None) -> "WanDiTConfig":
        """This config checked against the image encoder's config (a `CLIPVisionConfig`: `dim`,
        `num_tokens`; None: there is none), with `clip_tokens` taken from it for i2v (its tokens per image).

        The encoder's width must be `image_dim`; flf2v's position embedding fixes the token count,
        so there it must equal `clip_tokens`. A config without a CLIP image branch (t2v, ti2v, Wan2.2
        i2v) is returned unchanged: it needs no encoder, and does not use one."""
        if not self.has_image_branch:
            return self
        if clip is None:
            raise CheckpointError(f"the {self.model_type} DiT has a CLIP image branch (image_dim {self.image_dim}); "
                                  "it needs an image encoder, and none was found")
        if clip.dim != self.image_dim:
            raise CheckpointError(f"the image encoder is {clip.dim} wide; the DiT's image_dim is {self.image_dim}")
        if self.model_type == "flf2v" and clip.num_tokens != self.clip_tokens:
            raise CheckpointError(
                f"the image encoder makes {clip.num_tokens} tokens per image; the flf2v DiT's position embedding "
                f"covers {self.clip_tokens} per image (pos_embed_seq_len / img_emb.emb_pos {2 * self.clip_tokens})"
            )
        return dataclasses.replace(self, clip_tokens=clip.num_tokens)

    def to_official(self) -> dict:
        """config.json of the official Wan-AI layout (what `from_official` reads back). The fields the
        official WanModel does not have are written only where they differ from the defaults."""
        out = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": self.model_type,
               "patch_size": list(self.patch_size), "text_len": self.text_len, "in_dim": self.in_dim,
               "dim": self.dim, "ffn_dim": self.ffn_dim, "freq_dim": self.freq_dim, "text_dim": self.text_dim,
               "out_dim": self.out_dim, "num_heads": self.num_heads, "num_layers": self.num_layers,
               "window_size": list(OFFICIAL_WINDOW_SIZE), "qk_norm": self.qk_norm,
               "cross_attn_norm": self.cross_attn_norm, "eps": self.eps}
        for f in fields(self):
            if f.name in (*_IMAGE_FIELDS, "rope_max_seq_len") and getattr(self, f.name) != f.default:
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_official(
        cls, cfg: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> "WanDiTConfig":
        """From an official config.json (keys dim, ffn_dim, in_dim, model_type, num_heads, ...).

        Every key is honoured or refused by name: WanDiTConfig's fields, `window_size` (only
        [-1, -1]), '_' metadata and LightX2V's distill keys (LIGHTX2V_CONFIG_KEYS, read elsewhere).
        `shapes`: the official-keyed tensor shapes of the DiT weights (safetensors headers); the
        fields the config omits are read off them (the releases omit text_dim, patch_size, qk_norm,
        ...; Wan2.2 I2V omits image_dim: its weights have no img_emb), and a stated field the weights
        contradict is refused by name. A stated t2v / ti2v is honoured on either's weights (the same
        tensors). Without `shapes`, omitted fields take the Wan2.1 defaults (an i2v model then has the
        CLIP branch unless the config states image_dim null).
        """
        where = "official Wan config.json"
        names = [f.name for f in fields(cls)]
        for key, value in cfg.items():
            if key.startswith("_") or key in names or key in LIGHTX2V_CONFIG_KEYS:
                continue
            if key == "window_size":
                if not isinstance(value, (list, tuple)) or tuple(value) != OFFICIAL_WINDOW_SIZE:
                    raise CheckpointError(f"{where}: window_size {value!r} (local attention) is not supported; "
                                          "only [-1, -1] (global attention)")
                continue
            raise CheckpointError(f"{where}: unknown field {key!r}; supported: {', '.join(names)}, window_size, "
                                  "'_' metadata and LightX2V's distill keys")
        need = ("num_heads",) if shapes is not None else ("dim", "ffn_dim", "num_heads", "num_layers")
        missing = [k for k in need if k not in cfg]
        if missing:
            raise CheckpointError(f"{where} lacks {', '.join(missing)}")
        kw = {k: v for k, v in cfg.items() if k in names}
        if shapes is None:
            kw.setdefault("model_type", "t2v")
            kw.setdefault("in_dim", 16)
            return _build(cls, kw, where)
        from lightx2v.models.wan.dit_format import dit_config_from_state_dict  # (it imports this module)

        read = dit_config_from_state_dict(shapes, what=f"the DiT weights of the {where}")
        told = [f for f in _WEIGHT_SOURCES if f not in _IMAGE_FIELDS]
        if read.needs_y:
            told.append("image_dim")  # None: no img_emb tensors
        if read.has_image_branch:
            told += ["image_kv_proj"] + (["clip_tokens"] if read.model_type == "flf2v" else [])
        stated_type = kw.get("model_type", read.model_type)
        if not isinstance(stated_type, str) or weights_type(stated_type) != weights_type(read.model_type):
            # checked first: the image fields depend on it
            raise CheckpointError(f"{where} states model_type {stated_type!r}, but the weights have "
                                  f"{read.model_type!r} ({_WEIGHT_SOURCES['model_type']})")
        for f in told:
            kw.setdefault(f, getattr(read, f))
        out = _build(cls, kw, where)
        for f in told:  # (model_type: checked above; a stated t2v / ti2v is kept on either's weights)
            if f != "model_type" and f in cfg and getattr(out, f) != getattr(read, f):
                raise CheckpointError(f"{where} states {f} {getattr(out, f)!r}, but the weights have "
                                      f"{getattr(read, f)!r} ({_WEIGHT_SOURCES[f]})")
        return out

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "WanDiTConfig":
        """From a diffusers WanTransformer3DModel config (num_attention_heads, attention_head_dim, ...).

        Every field of WanTransformer3DModel is honoured or refused by name (DIFFUSERS_FIELDS);
        '_' keys are metadata; any other key is refused. diffusers states no model type; it follows
        from the fields: image_dim set -> i2v (flf2v with pos_embed_seq_len); no image_dim and
        in_channels != out_channels -> i2v without a CLIP branch (Wan2.2 I2V-A14B, `y` only); else
        t2v, or ti2v on TI2V_CHANNELS (48) channels (TI2V-5B; diffusers marks it in the pipeline's
        model_index.json, expand_timesteps).
        """
        where = "diffusers Wan transformer config.json"
        unknown = [k for k in cfg if not k.startswith("_") and k not in DIFFUSERS_FIELDS]
        if unknown:
            raise CheckpointError(f"{where}: unknown field {unknown[0]!r}; supported: {', '.join(DIFFUSERS_FIELDS)} "
                                  "and '_' metadata")
        missing = [k for k in ("num_attention_heads", "attention_head_dim", "ffn_dim", "num_layers") if k not in cfg]
        if missing:
            raise CheckpointError(f"{where} lacks {', '.join(missing)}")
        try:
            heads, head_dim = int(cfg["num_attention_heads"]), int(cfg["attention_head_dim"])
            dim = heads * head_dim
            qk_norm = cfg.get("qk_norm", "rms_norm_across_heads")
            if qk_norm not in (None, "rms_norm_across_heads"):
                raise CheckpointError(f"{where}: qk_norm {qk_norm!r} is not supported; "
                                      "expected 'rms_norm_across_heads'")
            image_dim, added, pos_len = cfg.get("image_dim"), cfg.get("added_kv_proj_dim"), cfg.get("pos_embed_seq_len")
            in_dim = int(cfg.get("in_channels", 16))
            out_dim = int(cfg.get("out_channels", 16) or in_dim)  # as diffusers: null -> in_channels
            model_type, image = "ti2v" if in_dim == out_dim == TI2V_CHANNELS else "t2v", {}
            if image_dim is None:
                for name, value in (("added_kv_proj_dim", added), ("pos_embed_seq_len", pos_len)):
                    if value is not None:
                        raise CheckpointError(f"{where}: {name} {value} without image_dim is not supported "
                                              "(a model without a CLIP image branch takes no image tokens)")
                if in_dim != out_dim:  # y (mask + image latents) on the input channels, no CLIP: Wan2.2 I2V
                    model_type, image = "i2v", {"image_dim": None}
            else:
                if added is not None and int(added) != dim:
                    raise CheckpointError(
                        f"{where}: added_kv_proj_dim {added} is not supported; expected {dim} (the model width: "
                        "own key/value projections for the image tokens) or null (the text ones)"
                    )
                image = {"image_dim": int(image_dim), "image_kv_proj": added is not None}
                model_type = "i2v"
                if pos_len is not None:
                    if int(pos_len) < 2 or int(pos_len) % 2:
                        raise CheckpointError(f"{where}: pos_embed_seq_len {pos_len} is not supported; FLF2V needs an "
                                              "even count (the first and the last frame's image tokens)")
                    model_type, image["clip_tokens"] = "flf2v", int(pos_len) // 2
            kw = dict(
                model_type=model_type, in_dim=in_dim, dim=dim, ffn_dim=int(cfg["ffn_dim"]), num_heads=heads,
                num_layers=int(cfg["num_layers"]), patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
                text_len=int(cfg.get("text_len", 512)), freq_dim=int(cfg.get("freq_dim", 256)),
                text_dim=int(cfg.get("text_dim", 4096)), out_dim=out_dim,
                qk_norm=qk_norm is not None, cross_attn_norm=bool(cfg.get("cross_attn_norm", True)),
                eps=float(cfg.get("eps", 1e-6)), rope_max_seq_len=int(cfg.get("rope_max_seq_len", ROPE_MAX_SEQ_LEN)),
                **image,
            )
        except CheckpointError:
            raise
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where} has a malformed value ({exc})") from None
        return _build(cls, kw, where)


def _build(cls: type[WanDiTConfig], kw: dict, where: str) -> WanDiTConfig:
    try:
        return cls(**kw)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has a malformed value ({exc})") from None


def image_fields_from_shapes(
    shapes: Mapping[str, tuple[int, ...]], base: WanDiTConfig | None = None
) -> dict[str, Any]:
    """The WanDiTConfig fields beyond the official WanModel's, from official-keyed tensor shapes:
    image_dim (img_emb.proj.0.weight [image_dim]), clip_tokens (flf2v: img_emb.emb_pos
    [1, 2 * clip_tokens, image_dim]; i2v: from `base`, the weights do not tell), image_kv_proj
    (blocks.0.cross_attn.k_img present) and rope_max_seq_len (from `base`). Empty for a t2v DiT
    without `base`. For dit_config_from_state_dict."""
    out: dict[str, Any] = {}
    if base is not None:
        out["rope_max_seq_len"] = base.rope_max_seq_len
        if base.model_type == "i2v":
            out["clip_tokens"] = base.clip_tokens
    if "img_emb.proj.0.weight" not in shapes:
        out.pop("clip_tokens", None)
        return out
    out["image_dim"] = int(shapes["img_emb.proj.0.weight"][0])
    out["image_kv_proj"] = "blocks.0.cross_attn.k_img.weight" in shapes
    if "img_emb.emb_pos" in shapes:
        out["clip_tokens"] = int(shapes["img_emb.emb_pos"][1]) // 2
    return out
