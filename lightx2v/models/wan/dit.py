"""The Wan2.1 diffusion transformer (DiT): T2V, I2V and FLF2V as configurations of one module.

Design: `WanModel` reproduces the official `WanModel` (Wan-Video/Wan2.1, wan/modules/model.py)
with the official parameter names, so the official checkpoint loads by name and a diffusers
checkpoint through `dit_key_from_diffusers`. It is built on the meta device and filled by
`lightx2v.loading.state_dict.load_into(..., keep_fp32=WanModel._keep_in_fp32)`; it holds no
buffers (the RoPE angles are computed in forward and cached per grid/device).

Differences from the reference that do not change the math: inputs are batched tensors (all
samples the same size, so there is no padding to `seq_len` and no key mask), the image tokens
are passed to cross-attention apart from the text tokens instead of being split off by
`context.shape[1] - 512`, and no autocast is used (see dit_blocks.py for the precision rules).
Beyond the official configurations, `WanDiTConfig` carries what diffusers' configs can state:
the CLIP width (`image_dim`), the CLIP tokens per image, image tokens attended with the text
key/value projections (`image_kv_proj=False`, diffusers' `added_kv_proj_dim=None`) and the RoPE
position bound (`rope_max_seq_len`).
Reference quirks kept on purpose: the text context is zero-padded to `text_len` and the padding
tokens are attended (no mask: the reference passes `context_lens=None`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.wan.dit_blocks import CLIP_DIM, Head, MLPProj, RopeCache, WanBlock, linear

MODEL_TYPES = ("t2v", "i2v", "flf2v")
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
    "model_type": "img_emb.* / img_emb.emb_pos tensors", "in_dim": "patch_embedding.weight",
    "dim": "patch_embedding.weight", "ffn_dim": "blocks.0.ffn.0.weight", "num_layers": "blocks.<i>",
    "patch_size": "patch_embedding.weight", "freq_dim": "time_embedding.0.weight",
    "text_dim": "text_embedding.0.weight", "out_dim": "head.head.weight", "qk_norm": "blocks.0.self_attn.norm_q",
    "cross_attn_norm": "blocks.0.norm3", "image_dim": "img_emb.proj.0.weight",
    "image_kv_proj": "blocks.0.cross_attn.k_img", "clip_tokens": "img_emb.emb_pos",
}
_IMAGE_FIELDS = ("image_dim", "clip_tokens", "image_kv_proj")


@dataclass(frozen=True, kw_only=True)
class WanDiTConfig:
    """Architecture of a Wan2.1 DiT, as in the official config.json (names of the official code).

    Beyond the official WanModel arguments (whose values the releases fix):
    image_dim         width of the CLIP image features (img_emb's input; 1280: ViT-H/14)
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
    image_dim: int = CLIP_DIM
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
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"{name} must be a positive integer, got {value!r}")
        if self.model_type == "t2v":
            stated = [f.name for f in fields(self) if f.name in _IMAGE_FIELDS and getattr(self, f.name) != f.default]
            if stated:
                raise CheckpointError(f"{stated[0]} {getattr(self, stated[0])!r} is set for a t2v model, "
                                      "which takes no image; it applies to i2v / flf2v models only")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def image_tokens(self) -> int:
        """Number of CLIP context tokens: 0 (t2v), clip_tokens (i2v), 2 * clip_tokens (flf2v: first and last frame)."""
        return {"t2v": 0, "i2v": self.clip_tokens, "flf2v": 2 * self.clip_tokens}[self.model_type]

    def with_image_encoder(self, clip: Any) -> "WanDiTConfig":
        """This config checked against the image encoder's config (a `CLIPVisionConfig`: `dim`,
        `num_tokens`), with `clip_tokens` taken from it for i2v (its tokens per image).

        The encoder's width must be `image_dim`; flf2v's position embedding fixes the token count,
        so there it must equal `clip_tokens`. t2v configs are returned unchanged."""
        if self.model_type == "t2v":
            return self
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
        ...), and a stated field the weights contradict is refused by name. Without `shapes`,
        omitted fields take the Wan2.1 defaults.
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
        if read.model_type != "t2v":
            told += ["image_dim", "image_kv_proj"] + (["clip_tokens"] if read.model_type == "flf2v" else [])
        stated_type = kw.get("model_type", read.model_type)
        if stated_type != read.model_type:  # checked first: the image fields depend on it
            raise CheckpointError(f"{where} states model_type {stated_type!r}, but the weights have "
                                  f"{read.model_type!r} ({_WEIGHT_SOURCES['model_type']})")
        for f in told:
            kw.setdefault(f, getattr(read, f))
        out = _build(cls, kw, where)
        for f in told:
            if f in cfg and getattr(out, f) != getattr(read, f):
                raise CheckpointError(f"{where} states {f} {getattr(out, f)!r}, but the weights have "
                                      f"{getattr(read, f)!r} ({_WEIGHT_SOURCES[f]})")
        return out

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "WanDiTConfig":
        """From a diffusers WanTransformer3DModel config (num_attention_heads, attention_head_dim, ...).

        Every field of WanTransformer3DModel is honoured or refused by name (DIFFUSERS_FIELDS);
        '_' keys are metadata; any other key is refused.
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
            model_type, image = "t2v", {}
            if image_dim is None:
                for name, value in (("added_kv_proj_dim", added), ("pos_embed_seq_len", pos_len)):
                    if value is not None:
                        raise CheckpointError(f"{where}: {name} {value} without image_dim is not supported "
                                              "(a t2v model takes no image tokens)")
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
            in_dim = int(cfg.get("in_channels", 16))
            kw = dict(
                model_type=model_type, in_dim=in_dim, dim=dim, ffn_dim=int(cfg["ffn_dim"]), num_heads=heads,
                num_layers=int(cfg["num_layers"]), patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
                text_len=int(cfg.get("text_len", 512)), freq_dim=int(cfg.get("freq_dim", 256)),
                text_dim=int(cfg.get("text_dim", 4096)), out_dim=int(cfg.get("out_channels") or in_dim),
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


def sinusoidal_embedding(dim: int, t: Tensor) -> Tensor:
    """[cos | sin] embedding of timesteps t: [B] -> [B, dim], computed in float64 as the reference."""
    half = dim // 2
    pos = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(pos, freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class WanModel(nn.Module):
    """Wan2.1 DiT. forward(x [B, in_dim, F, H, W], t [B], context [B, Lc, text_dim]) -> [B, out_dim, F, H, W]."""

    # params whose name contains one of these stay float32 (load_into(keep_fp32=...)): the time
    # path and modulations, as the official code runs them in fp32, and the norm weights, which
    # the official run multiplies in fp32 too (its weights are fp32 under autocast)
    _keep_in_fp32 = (
        "time_embedding", "time_projection", "modulation", "norm3", "norm_q", "norm_k",
        "img_emb.proj.0", "img_emb.proj.4",
    )
    # What the engine reads (lightx2v.runtime.engine): the ModuleLists of identical blocks (regional
    # compile, offload, caching wrap these), and the linears a quantizer may touch, as a regex over
    # module names: the blocks' attention and FFN projections, what LightX2V quantizes; embeddings,
    # the time projection and the head stay in float (small, precision-sensitive).
    _repeated_blocks: tuple[str, ...] = ("blocks",)
    _quant_linears = r"blocks\.\d+\.(self_attn|cross_attn|ffn)\..+"

    @staticmethod
    def key_from_diffusers(key: str) -> str | None:
        """This model's name for a diffusers WanTransformer3DModel key (LoRA files, DiT files)."""
        return dit_key_from_diffusers(key)

    def __init__(self, config: WanDiTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        image_input = c.image_tokens > 0
        self.blocks = nn.ModuleList(
            WanBlock(c.dim, c.ffn_dim, c.num_heads, c.qk_norm, c.cross_attn_norm, c.eps,
                     image_input and c.image_kv_proj)
            for _ in range(c.num_layers)
        )
        self.head = Head(c.dim, c.out_dim * math.prod(c.patch_size), c.eps)
        if image_input:
            self.img_emb = MLPProj(c.dim, 2 * c.clip_tokens if c.model_type == "flf2v" else None, c.image_dim)
        # RoPE (cos, sin) per token grid: derived data, so not a buffer (the model is meta-built);
        # named state with reset(), safe to share between threads
        self.rope_cache = RopeCache(c.head_dim)

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        """RoPE (cos, sin) [L, 1, head_dim/2, 2] fp32 for a token grid (cached)."""
        return self.rope_cache.get(grid, device)

    def _check_inputs(self, x: Tensor, t: Tensor, context: Tensor, clip_fea: Tensor | None, y: Tensor | None) -> None:
        c = self.config
        if x.ndim != 5:
            raise InputError(f"x must be [B, C, F, H, W], got shape {tuple(x.shape)}")
        channels = x.shape[1] + (y.shape[1] if y is not None else 0)
        if channels != c.in_dim:
            raise InputError(f"x (+ y) has {channels} channels, the {c.model_type} model expects {c.in_dim}")
        if any(s % p for s, p in zip(x.shape[2:], c.patch_size)):
            raise InputError(f"latent size {tuple(x.shape[2:])} is not divisible by the patch size {c.patch_size}")
        grid = tuple(s // p for s, p in zip(x.shape[2:], c.patch_size))
        for axis, n in zip(("frame", "height", "width"), grid):
            if n > c.rope_max_seq_len:
                raise InputError(
                    f"latent grid {grid} has {n} positions on the {axis} axis; this model's RoPE covers "
                    f"rope_max_seq_len = {c.rope_max_seq_len} per axis (fewer frames or a smaller size)"
                )
        if t.shape != (x.shape[0],):
            raise InputError(f"t must be [B] = [{x.shape[0]}], got shape {tuple(t.shape)}")
        if (context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[1] > c.text_len
                or context.shape[2] != c.text_dim):
            raise InputError(
                f"context must be [B={x.shape[0]}, <= {c.text_len}, {c.text_dim}], got {tuple(context.shape)}"
            )
        if c.image_tokens and (clip_fea is None or y is None):
            raise InputError(f"the {c.model_type} model needs clip_fea and y (the image conditioning)")
        if clip_fea is not None and (clip_fea.numel() != x.shape[0] * c.image_tokens * c.image_dim
                                     or clip_fea.shape[-1] != c.image_dim):
            raise InputError(
                f"clip_fea must be [B, {c.image_tokens}, {c.image_dim}] for this {c.model_type} model, "
                f"got {tuple(clip_fea.shape)}"
            )

    def embed_time(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """t: [B] -> (e [B, C], e0 [B, 6, C]), both float32."""
        s = sinusoidal_embedding(self.config.freq_dim, t).float()
        e = linear(self.time_embedding[0], s)
        e = linear(self.time_embedding[2], self.time_embedding[1](e)).float()
        e0 = linear(self.time_projection[1], self.time_projection[0](e)).float()
        return e, e0.unflatten(1, (6, self.config.dim))

    def embed_context(self, context: Tensor, clip_fea: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Text context (zero-padded to text_len) and image context, projected to the model width."""
        c = self.config
        context = F.pad(context, (0, 0, 0, c.text_len - context.shape[1]))  # [B, text_len, text_dim]
        ctx = linear(self.text_embedding[0], context)
        ctx = linear(self.text_embedding[2], self.text_embedding[1](ctx))
        ctx_img = None
        if clip_fea is not None:
            # flf2v: also accepts the reference's [2B, 257, 1280] (first/last frame per sample)
            ctx_img = self.img_emb(clip_fea.reshape(ctx.shape[0], c.image_tokens, c.image_dim))
            if not c.image_kv_proj:
                # no k_img / v_img: the image tokens are attended with the text ones (diffusers'
                # added_kv_proj_dim None puts them first; the order does not change the attention)
                return torch.cat([ctx_img.to(ctx.dtype), ctx], dim=1), None
        return ctx, ctx_img

    def unpatchify(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """[B, L, prod(patch) * out_dim] -> [B, out_dim, F, H, W]."""
        pt, ph, pw = self.config.patch_size
        f, h, w = grid
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, f, pt, h, ph, w, pw]
        return x.reshape(x.shape[0], self.config.out_dim, f * pt, h * ph, w * pw)

    def forward(
        self, x: Tensor, t: Tensor, context: Tensor, clip_fea: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        """Predict the flow (velocity) for latents x at timesteps t.

        x: [B, in_dim (or in_dim - y's channels), F, H, W]; t: [B] float timesteps in [0, 1000];
        context: [B, Lc <= text_len, text_dim] T5 features (zero-padded to text_len here);
        clip_fea: [B, 257 | 514, 1280] CLIP features (i2v | flf2v); y: [B, 20, F, H, W] mask + image
        latents (i2v), concatenated to x on channels. Returns float32 [B, out_dim, F, H, W].
        """
        self._check_inputs(x, t, context, clip_fea, y)
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        x = linear(self.patch_embedding, x)  # [B, C, f, h, w]
        grid = tuple(x.shape[2:])
        # [B, L, C] fp32 residual stream; made contiguous, else the transposed strides of the conv
        # output would carry into every elementwise op of every block (slow, non-vectorized kernels)
        x = x.flatten(2).transpose(1, 2).contiguous().float()
        e, e0 = self.embed_time(t)
        ctx, ctx_img = self.embed_context(context, clip_fea)
        x = self.run_blocks(x, e0=e0, context=ctx, context_img=ctx_img, rope=self.rope(grid, x.device))
        x = self.head(x, e)  # [B, L, prod(patch) * out_dim]
        return self.unpatchify(x, grid).float()

    def run_blocks(self, x: Tensor, **kw: Any) -> Tensor:
        """The block stack: x [B, L, C] fp32 -> [B, L, C] fp32. The one boundary a cache or a parallel
        transform wraps (lightx2v.runtime): forward = embed -> run_blocks -> head. `kw`: e0 [B, 6, C],
        context [B, text_len, C], context_img [B, n_img, C] | None, rope [L, 1, D/2, 2]."""
        for block in self.blocks:
            x = block(x, kw["e0"], kw["context"], kw["context_img"], kw["rope"])
        return x


# ---------------------------------------------------------------- diffusers -> official keys

_ATTN = {
    "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o", "norm_q": "norm_q", "norm_k": "norm_k",
    "add_k_proj": "k_img", "add_v_proj": "v_img", "norm_added_k": "norm_k_img",
}
_TOP = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
}
_BLOCK = {
    **{f"attn1.{k}": f"self_attn.{v}" for k, v in _ATTN.items()},
    **{f"attn2.{k}": f"cross_attn.{v}" for k, v in _ATTN.items()},
    "norm2": "norm3",  # diffusers' norm2 is the affine cross-attention norm, the official norm3
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
_PARAM = re.compile(r"(?P<mod>.+)\.(?P<p>weight|bias)")
_BLOCK_KEY = re.compile(r"blocks\.(?P<i>\d+)\.(?P<rest>.+)")
_WHOLE = {
    "scale_shift_table": "head.modulation",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
}


def dit_key_from_diffusers(key: str) -> str | None:
    """Official key for a diffusers WanTransformer3DModel key; unknown keys are returned unchanged
    (so that load_into reports them), keys diffusers itself ignores map to None."""
    if key in _WHOLE:
        return _WHOLE[key]
    block = _BLOCK_KEY.fullmatch(key)
    prefix, rest, table = "", key, _TOP
    if block:
        prefix, rest, table = f"blocks.{block['i']}.", block["rest"], _BLOCK
        if rest == "scale_shift_table":
            return prefix + "modulation"
        if rest.startswith("attn2.norm_added_q."):
            return None  # in some diffusers I2V checkpoints, unused (diffusers' _keys_to_ignore_on_load_unexpected)
    param = _PARAM.fullmatch(rest)
    if param and param["mod"] in table:
        return f"{prefix}{table[param['mod']]}.{param['p']}"
    return key
