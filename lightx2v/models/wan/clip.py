"""The CLIP image encoder of Wan2.1 I2V / FLF2V: the ViT-H/14 visual tower of open-clip
`xlm-roberta-large-vit-huge-14`, returning the tokens after its penultimate block.

Design: `WanCLIPVision` is the official `VisionTransformer` (Wan-Video/Wan2.1,
wan/modules/clip.py, as built by `clip_xlm_roberta_vit_h_14`) with the official parameter names
below `visual.`:

    patch_embedding.weight              Conv2d(3, dim, 14, stride 14), no bias (pre-norm ViT)
    cls_embedding [1, 1, dim]           class token
    pos_embedding [1, 1 + n_patches, dim]
    pre_norm.{weight,bias}              LayerNorm on the embeddings, before the blocks
    transformer.{i}.norm1 / norm2       pre-norm blocks: x + attn(norm1(x)); x + mlp(norm2(x))
    transformer.{i}.attn.to_qkv         fused [q; k; v] projection, [3*dim, dim]
    transformer.{i}.attn.proj
    transformer.{i}.mlp.{0,2}           Linear, GELU (erf; "quick_gelu" by config), Linear
    post_norm.{weight,bias}

The Wan pipelines call `visual(..., use_31_block=True)`: the output is the token sequence after
all blocks but the last, with no final norm: [B, 257, 1280]. We compute exactly that. The last
block and `post_norm` are still built and loaded, so an official file loads strictly (a truncated
file fails) although they are never computed (about 40 MB in fp16). `visual.head` (the projection
to the joint text-image space, [dim, 1024]) is the one visual tensor not built: it is unused and
the diffusers layout (a transformers `CLIPVisionModel`) does not have it.

Precision follows the reference run (weights cast to fp16 whole, fp16 autocast): nothing is kept
in fp32; LayerNorms compute in fp32 and return the input dtype (official `LayerNorm`); the
residual stream, linears and attention run in the weights' dtype. Attention goes through
`self.attn_backend` (lightx2v.ops.attention), q/k/v laid out [B, L, H, D].

Two preprocessing conventions, one per layout: `preprocess_official` (bicubic resize of a [-1, 1]
tensor to 224x224, no crop: the official `CLIPModel.visual`) and `preprocess_diffusers`
(transformers' `CLIPImageProcessor` on PIL images: shortest edge to 224, center crop).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.wan.dit_blocks import LayerNormFP32, linear
from lightx2v.ops.attention import get_backend

__all__ = [
    "CLIPVisionConfig",
    "WanCLIPVision",
    "clip_key_from_official",
    "clip_state_dict_from_transformers",
    "preprocess_diffusers",
    "preprocess_official",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ACTIVATIONS = ("gelu", "quick_gelu")
OFFICIAL_HEAD_DIM = 80  # ViT-H/14: 1280 wide, 16 heads; heads cannot be read off tensor shapes


@dataclass(frozen=True)
class CLIPVisionConfig:
    """Architecture of the visual tower; the defaults are the ViT-H/14 of Wan2.1 I2V."""

    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    ffn_dim: int = 5120  # dim * mlp_ratio 4
    num_heads: int = 16
    num_layers: int = 32
    eps: float = 1e-5
    activation: str = "gelu"  # official clip_xlm_roberta_vit_h_14 passes activation='gelu' (erf GELU)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise CheckpointError(f"CLIP width {self.dim} is not a multiple of num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise CheckpointError(f"CLIP image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.activation not in ACTIVATIONS:
            raise CheckpointError(f"CLIP activation {self.activation!r} is not supported; expected one of {ACTIVATIONS}")
        if self.num_layers < 2:
            raise CheckpointError(f"CLIP needs at least 2 layers (the output is the penultimate), got {self.num_layers}")

    @property
    def num_tokens(self) -> int:
        """Tokens per image: patches plus the class token (257 for ViT-H/14 at 224)."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_transformers(cls, config: Mapping[str, Any]) -> "CLIPVisionConfig":
        """Read a transformers CLIPVisionConfig `config.json` (diffusers layout: `image_encoder/config.json`).

        A full CLIPConfig (`vision_config` nested) is accepted too. A missing `hidden_act` means
        transformers' default, quick_gelu (the Wan diffusers checkpoints say "gelu").
        """
        config = config.get("vision_config", config)
        need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size")
        missing = [k for k in need if k not in config]
        if missing:
            raise CheckpointError(f"image encoder config.json lacks {', '.join(missing)}")
        if int(config.get("num_channels", 3)) != 3:
            raise CheckpointError(f"image encoder num_channels is {config['num_channels']}, expected 3")
        return cls(
            image_size=_square(config["image_size"], "image_size"),
            patch_size=_square(config["patch_size"], "patch_size"),
            dim=int(config["hidden_size"]),
            ffn_dim=int(config["intermediate_size"]),
            num_heads=int(config["num_attention_heads"]),
            num_layers=int(config["num_hidden_layers"]),
            eps=float(config.get("layer_norm_eps", 1e-5)),
            activation=str(config.get("hidden_act", "quick_gelu")),
        )

    @classmethod
    def from_state_dict(
        cls, sd: Mapping[str, Tensor], num_heads: int | None = None, what: str = "CLIP"
    ) -> "CLIPVisionConfig":
        """Sizes read off an official-named state dict (after `clip_key_from_official`).

        The official file has no config. The head count is not in any tensor shape: by default
        it is `dim // 80`, the head size of the official ViT-H/14; eps and the activation are the
        official ones (1e-5, gelu).
        """
        for key in ("patch_embedding.weight", "pos_embedding", "transformer.0.mlp.0.weight"):
            if key not in sd:
                raise CheckpointError(f"{what} has no tensor {key!r}; is it the CLIP image encoder?")
        dim, _, patch, _ = sd["patch_embedding.weight"].shape
        grid = math.isqrt(sd["pos_embedding"].shape[1] - 1)
        layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"transformer\.(\d+)\.", k)))
        if num_heads is None:
            if dim % OFFICIAL_HEAD_DIM:
                raise CheckpointError(f"{what}: width {dim} is not a multiple of {OFFICIAL_HEAD_DIM}; pass num_heads")
            num_heads = dim // OFFICIAL_HEAD_DIM
        return cls(image_size=grid * patch, patch_size=patch, dim=dim, ffn_dim=sd["transformer.0.mlp.0.weight"].shape[0],
                   num_heads=num_heads, num_layers=layers)


def _square(value: Any, name: str) -> int:
    """transformers allows an int or an (h, w) pair; the official ViT is square."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"image encoder {name} {value} is not square")
        value = value[0]
    return int(value)


# ---------------------------------------------------------------- model


class LayerNorm(LayerNormFP32):
    """LayerNorm in fp32, result in the input's dtype (the official clip.py `LayerNorm`)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the original OpenAI CLIP activation."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPSelfAttention(nn.Module):
    """Bidirectional self-attention with a fused q/k/v projection (official `SelfAttention`)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_backend = get_backend("torch_sdpa")  # swapped by set_attention_backend

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, L, C] -> [B, L, C]; to_qkv's output is [q | k | v], each split into heads
        q, k, v = linear(self.to_qkv, x).unflatten(-1, (3, self.num_heads, -1)).unbind(2)  # [B, L, H, D]
        out = self.attn_backend(q, k, v)  # [B, L, H, D]
        return linear(self.proj, out.flatten(2))


class CLIPBlock(nn.Module):
    """Pre-norm transformer block (official `AttentionBlock` with post_norm=False)."""

    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = CLIPSelfAttention(cfg.dim, cfg.num_heads)
        self.norm2 = LayerNorm(cfg.dim, eps=cfg.eps)
        act = nn.GELU() if cfg.activation == "gelu" else QuickGELU()
        # index 0 and 2 as in the official Sequential (its trailing Dropout has no parameters)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), act, nn.Linear(cfg.ffn_dim, cfg.dim))

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, L, C] residual stream, kept in its dtype (the weights' dtype)
        x = x + self.attn(self.norm1(x)).to(x.dtype)
        h = self.mlp[1](linear(self.mlp[0], self.norm2(x)))
        return x + linear(self.mlp[2], h).to(x.dtype)


class WanCLIPVision(nn.Module):
    """Normalized pixels [B, 3, S, S] -> tokens after the penultimate block [B, 1 + (S/p)^2, dim]."""

    # nothing is kept in fp32: the reference casts the whole CLIP model to fp16
    _keep_in_fp32: tuple[str, ...] = ()
    _repeated_blocks: tuple[str, ...] = ("transformer",)
    # the linears a quantizer may touch (EngineConfig.quant_image_encoder): the blocks' attention and
    # MLP projections; the patch embedding, the embeddings and the norms stay
    _quant_linears = r"transformer\.\d+\.(attn\.(to_qkv|proj)|mlp\.(0|2))"

    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # bias=False: the official ViT has a pre-norm and then no patch-embedding bias
        self.patch_embedding = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.empty(1, 1, cfg.dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, cfg.num_tokens, cfg.dim))
        self.pre_norm = LayerNorm(cfg.dim, eps=cfg.eps)
        self.transformer = nn.ModuleList(CLIPBlock(cfg) for _ in range(cfg.num_layers))
        # loaded for a strict load of the official file, never computed (see the module docstring)
        self.post_norm = LayerNorm(cfg.dim, eps=cfg.eps)

    def forward(self, pixels: Tensor) -> Tensor:
        # pixels: [B, 3, S, S] normalized -> [B, num_tokens, dim] in the weights' dtype
        s = self.cfg.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, s, s):
            raise InputError(f"CLIP input has shape {tuple(pixels.shape)}, expected [B, 3, {s}, {s}]")
        w = self.patch_embedding.weight
        x = self.patch_embedding(pixels.to(device=w.device, dtype=w.dtype)).flatten(2).transpose(1, 2)  # [B, N, C]
        x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = self.pre_norm(x + self.pos_embedding.to(x.dtype))
        for block in self.transformer[:-1]:  # the reference's use_31_block: all blocks but the last
            x = block(x)
        return x


# ---------------------------------------------------------------- checkpoint keys

# Parts of the official file (a whole XLM-RoBERTa CLIP) that the Wan pipelines never use:
# the text tower, the logit scale, and the visual projection head.
_OFFICIAL_UNUSED = re.compile(r"textual\..*|log_scale|visual\.head")


def clip_key_from_official(key: str) -> str | None:
    """Rename a key of `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` to ours.

    `visual.` is stripped; `textual.*`, `log_scale` and `visual.head` are known unused and
    dropped; any other key is returned unchanged so that `load_into` reports it.
    """
    return None if _OFFICIAL_UNUSED.fullmatch(key) else key.removeprefix("visual.")


# transformers CLIPVisionModel key (without `vision_model.`) -> official key
_TRANSFORMERS_RENAMES: tuple[tuple[re.Pattern[str], str | None], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"embeddings\.patch_embedding\.weight", "patch_embedding.weight"),
        (r"embeddings\.class_embedding", "cls_embedding"),
        (r"embeddings\.position_embedding\.weight", "pos_embedding"),
        (r"embeddings\.position_ids", None),  # derived buffer saved by older transformers
        (r"pre_layrnorm\.(weight|bias)", r"pre_norm.\1"),
        (r"post_layernorm\.(weight|bias)", r"post_norm.\1"),
        # CLIPVisionModelWithProjection's projection to the joint space: unused (as the official visual.head)
        (r"visual_projection\.(weight|bias)", None),
        (r"encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)", r"transformer.\1.norm1.\2"),
        (r"encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)", r"transformer.\1.norm2.\2"),
        (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"transformer.\1.attn.proj.\2"),
        (r"encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer.\1.mlp.0.\2"),
        (r"encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer.\1.mlp.2.\2"),
    )
)
_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")


def clip_state_dict_from_transformers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers `CLIPVisionModel` state dict (`image_encoder/model.safetensors`) in our keys.

    Keys may carry the `vision_model.` prefix (checkpoints saved by transformers 4) or not
    (transformers 5). q/k/v projections are concatenated into the official fused `to_qkv`
    (a new tensor: the only copy made); the class and position embeddings get the official
    leading dims (views). A layer with only some of q/k/v keeps them under their own names,
    and unknown keys are kept unchanged, so that `load_into` reports them.
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        k = key.removeprefix("vision_model.")
        if m := _QKV.fullmatch(k):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _TRANSFORMERS_RENAMES:
            if pattern.fullmatch(k):
                k = None if repl is None else pattern.sub(repl, k)
                break
        else:
            k = key
        if k is not None:
            out[k] = value
    for (layer, kind), parts in qkv.items():
        if parts.keys() == {"q", "k", "v"}:
            out[f"transformer.{layer}.attn.to_qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
        else:
            out.update({f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}": t for p, t in parts.items()})
    if "cls_embedding" in out:
        out["cls_embedding"] = out["cls_embedding"].reshape(1, 1, -1)
    if "pos_embedding" in out:
        out["pos_embedding"] = out["pos_embedding"].unsqueeze(0)
    return out


# ---------------------------------------------------------------- preprocessing


def preprocess_official(images: Tensor | Sequence[Tensor], cfg: CLIPVisionConfig | None = None) -> Tensor:
    """What the official `CLIPModel.visual` does before the ViT: [-1, 1] images -> normalized pixels.

    `images`: [B, 3, H, W] or a sequence of [3, H, W] / [B_i, 3, H, W] (sizes may differ, as for
    the first and last frame of FLF2V). Each is resized with bicubic `F.interpolate` to
    image_size x image_size (align_corners=False, no antialias, no crop, aspect ratio not kept),
    then mapped to [0, 1] by x*0.5+0.5 and normalized with the config's mean/std, in float32.
    Returns [B, 3, image_size, image_size] float32.
    """
    cfg = cfg or CLIPVisionConfig()
    parts = [images] if isinstance(images, Tensor) else list(images)
    size = (cfg.image_size, cfg.image_size)
    out = []
    for u in parts:
        u = u.unsqueeze(0) if u.ndim == 3 else u
        if u.ndim != 4 or u.shape[1] != 3:
            raise InputError(f"CLIP image has shape {tuple(u.shape)}, expected [3, H, W] or [B, 3, H, W] in [-1, 1]")
        out.append(F.interpolate(u.float(), size=size, mode="bicubic", align_corners=False))
    x = torch.cat(out) * 0.5 + 0.5
    mean = torch.tensor(cfg.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# CLIPImageProcessor's defaults (a key absent from preprocessor_config.json takes these)
_PROCESSOR_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "do_resize": True, "size": MappingProxyType({"shortest_edge": 224}), "resample": 3, "do_center_crop": True,
    "crop_size": MappingProxyType({"height": 224, "width": 224}), "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD, "do_convert_rgb": True,
})


def _to_rgb(image: Any, convert: bool) -> np.ndarray:
    """PIL image -> uint8 [H, W, 3]; transparency is composited onto white (as transformers 5)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise InputError(f"preprocess_diffusers takes PIL images, got {type(image).__name__}")
    if convert and ("A" in image.getbands() or image.info.get("transparency") is not None):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if convert:
        image = image.convert("RGB")
    if image.mode != "RGB":
        raise InputError(f"image mode {image.mode!r} with do_convert_rgb false; expected an RGB image")
    return np.asarray(image)


def _resize_size(h: int, w: int, size: Mapping[str, int]) -> tuple[int, int]:
    """Output (height, width) of transformers' resize for a `size` dict."""
    if set(size) == {"shortest_edge"}:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_long, new_short) if w <= h else (new_short, new_long)
    if set(size) == {"height", "width"}:
        return size["height"], size["width"]
    raise CheckpointError(f"image processor size {dict(size)} is not supported; expected shortest_edge or height/width")


def _center_crop(x: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """[H, W, C] -> [ch, cw, C]; an image smaller than the crop is zero-padded around (as transformers)."""
    h, w = x.shape[:2]
    ph, pw = max(ch, h), max(cw, w)
    if (ph, pw) != (h, w):
        top, left = math.ceil((ph - h) / 2), math.ceil((pw - w) / 2)
        x = np.pad(x, ((top, ph - h - top), (left, pw - w - left), (0, 0)))
    top, left = (ph - ch) // 2, (pw - cw) // 2
    return x[top : top + ch, left : left + cw]


def preprocess_diffusers(images: Any, processor_config: Mapping[str, Any]) -> Tensor:
    """What transformers' `CLIPImageProcessor(**processor_config)` makes of PIL images (PIL backend).

    `images`: one PIL image or a list; `processor_config`: `image_processor/preprocessor_config.json`.
    Resize with PIL (shortest edge, `resample`), center crop, rescale (in float64, then float32),
    normalize (float32). Returns float32 [B, 3, crop_h, crop_w]; all images must end the same size.
    """
    from PIL import Image

    cfg = {**_PROCESSOR_DEFAULTS, **{k: v for k, v in processor_config.items() if v is not None}}
    if cfg.get("do_pad"):
        raise CheckpointError("image processor do_pad is not supported")
    size, crop = cfg["size"], cfg["crop_size"]
    size = {"shortest_edge": size} if isinstance(size, int) else size  # CLIP: an int is the shortest edge
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    mean = np.asarray(cfg["image_mean"], dtype=np.float32)
    std = np.asarray(cfg["image_std"], dtype=np.float32)
    out = []
    for image in [images] if isinstance(images, Image.Image) else list(images):
        x = _to_rgb(image, bool(cfg["do_convert_rgb"]))  # [H, W, 3] uint8
        if cfg["do_resize"]:
            h, w = _resize_size(x.shape[0], x.shape[1], size)
            x = np.asarray(Image.fromarray(x).resize((w, h), resample=Image.Resampling(int(cfg["resample"]))))
        if cfg["do_center_crop"]:
            x = _center_crop(x, crop["height"], crop["width"])
        if cfg["do_rescale"]:
            x = (x.astype(np.float64) * cfg["rescale_factor"]).astype(np.float32)
        x = x.astype(np.float32)
        if cfg["do_normalize"]:
            x = (x - mean) / std
        out.append(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))))
    if len({tuple(t.shape) for t in out}) > 1:
        raise InputError(f"preprocessed images differ in size {sorted({tuple(t.shape) for t in out})}; enable the crop")
    return torch.stack(out)
