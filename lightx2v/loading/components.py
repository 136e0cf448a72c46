"""Build each Wan component on the meta device and load its weights (mmap + assign).

One function per component; each knows the two layouts only through a key-renaming function
that the model's own module provides, so loading is a rename table, not code.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from lightx2v.config import ModelConfig
from lightx2v.loading.state_dict import load_into, read_sharded, read_tensors, rename


def _build(cls: type, cfg) -> nn.Module:
    with torch.device("meta"):
        return cls(cfg)


def _files(value) -> list:
    return value if isinstance(value, list) else [value]


def _state_dict(files, key_map: Optional[Callable[[str], Optional[str]]]):
    files = _files(files)
    sd = read_tensors(files[0]) if len(files) == 1 else read_sharded(files)
    return rename(sd, key_map) if key_map is not None else sd


def load_dit(mc: ModelConfig, device: torch.device, dtype: torch.dtype, attention: str = "auto",
             quant: Optional[str] = None) -> nn.Module:
    """The DiT of the folder (or of `mc.dit_source`, a file the user gave), optionally quantized.

    One path for every source (lightx2v.loading.dit_files.build_dit): a pre-quantized file loads
    into quantized layers as it is; `quant` on float weights quantizes the block linears as each
    tensor is read, so the float model is never whole in memory.
    """
    from lightx2v.loading.dit_files import build_dit, inspect_dit_source
    from lightx2v.ops.attention import resolve_attention, set_attention_backend

    src = mc.dit_source if mc.dit_source is not None else inspect_dit_source(mc.root)
    model = build_dit(src, dtype=dtype, device=device, expected=mc.dit, quant=quant)
    set_attention_backend(model, resolve_attention(attention, device, dtype))
    return model


def load_text_encoder(mc: ModelConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
    from lightx2v.models.wan.t5 import UMT5Encoder, t5_key_from_transformers

    model = _build(UMT5Encoder, mc.text_encoder)
    sd = _state_dict(mc.files["text_encoder"], t5_key_from_transformers if mc.layout == "diffusers" else None)
    keep = getattr(UMT5Encoder, "_keep_in_fp32", ())
    load_into(model, sd, dtype=dtype, device=device, keep_fp32=keep, what="text encoder")
    return model.eval().requires_grad_(False)


def load_tokenizer(mc: ModelConfig):
    from lightx2v.models.wan.tokenizer import WanTokenizer

    return WanTokenizer.from_folder(mc.files["tokenizer"], text_len=mc.dit.text_len)


def load_vae(mc: ModelConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
    from lightx2v.models.wan.vae import WanVAE, vae_key_from_diffusers

    model = _build(WanVAE, mc.vae)
    sd = _state_dict(mc.files["vae"], vae_key_from_diffusers if mc.layout == "diffusers" else None)
    load_into(model, sd, dtype=dtype, device=device, what="VAE")
    return model.eval().requires_grad_(False)


def load_clip(mc: ModelConfig, device: torch.device, dtype: torch.dtype, attention: str = "auto") -> nn.Module:
    """The CLIP ViT-H/14 image encoder of I2V/FLF2V checkpoints (official .pth or diffusers image_encoder/)."""
    from lightx2v.models.wan.clip import WanCLIPVision, clip_key_from_official, clip_state_dict_from_transformers
    from lightx2v.ops.attention import resolve_attention, set_attention_backend

    # the official code runs CLIP in fp16 (clip_dtype); fp32 stays fp32
    dtype = torch.float32 if dtype == torch.float32 else torch.float16
    model = _build(WanCLIPVision, mc.clip)
    if mc.layout == "official":
        sd = _state_dict(mc.files["clip"], clip_key_from_official)
    else:
        sd = clip_state_dict_from_transformers(_state_dict(mc.files["clip"], None))
    load_into(model, sd, dtype=dtype, device=device, keep_fp32=getattr(WanCLIPVision, "_keep_in_fp32", ()),
              what="image encoder")
    set_attention_backend(model, resolve_attention(attention, device, dtype))
    return model.eval().requires_grad_(False)
