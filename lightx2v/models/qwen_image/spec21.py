"""What the qwen-image family's spec (spec.py) does differently for a Qwen-Image-2.1 checkpoint.

spec.py's component functions, geometry, memory and describe hand a `QwenImage21Arch` checkpoint to
the functions here (`is_21(mc)`); the DiT is loaded by the 2.1 pipeline (`load_dit21`), as
HunyuanVideo-1.5's is: the generic DiT-file path reads the Qwen-Image MMDiT's format.
"""

from __future__ import annotations

import torch

from lightx2v.config import ModelConfig
from lightx2v.models.registry import Geometry, MemoryProfile

# 2.1's largest published side (QwenImage21Pipeline's output_resolution default 1024; not a trained
# maximum the release states: the check warns beyond it unless forced)
TRAINED_SIZE_21 = (1024, 1024)
TEXT_TOKENS_21 = 1024  # prompt tokens the estimate assumes (no cap in the reference)


def is_21(mc: ModelConfig) -> bool:
    from lightx2v.models.qwen_image.layouts21 import QwenImage21Arch

    return isinstance(mc.arch, QwenImage21Arch)


def build_text_encoder(mc: ModelConfig):
    from lightx2v.models.qwen_image.text21 import QwenTextEncoder21

    return QwenTextEncoder21(mc.arch.text_encoder)


def read_text_encoder(mc: ModelConfig):
    from lightx2v.models.qwen_image.text21 import text21_key_from_file
    from lightx2v.models.wan.spec import _read

    return _read(mc.files["text_encoder"], text21_key_from_file)


def build_vae(mc: ModelConfig):
    from lightx2v.models.qwen_image.vae21 import QwenImage21VAE

    return QwenImage21VAE(mc.arch.vae)


def read_vae(mc: ModelConfig):
    from lightx2v.models.wan.spec import _read

    return _read(mc.files["vae"])


def load_dit21(mc: ModelConfig, *, device, dtype: torch.dtype, quant=None):
    """The transformer/ folder's DiT: built on meta, its declared linears quantized as read when `quant`."""
    from lightx2v.loading.dit_files import load_dit_weights
    from lightx2v.models.qwen_image.dit21 import QwenImage21DiT
    from lightx2v.models.wan.spec import _read
    from lightx2v.quant import apply_quant

    with torch.device("meta"):
        model = QwenImage21DiT(mc.dit)
    if quant is not None:
        apply_quant(model, quant, compute_dtype=dtype)
    load_dit_weights(model, _read(mc.files["dit"]), dtype=dtype, device=device, what="transformer")
    return model.eval().requires_grad_(False)


def geometry(mc: ModelConfig) -> Geometry:
    """Sides multiples of 32: the VAE's 16x, and each text-encoder image slot is 2 x 2 latent tokens."""
    s = mc.arch.vae.scale_factor_spatial
    return Geometry(size_multiple=2 * s, frame_step=1, latent_channels=mc.arch.vae.z_dim, stride=(1, s, s),
                    max_frames=1, size_reason=f"VAE stride {s} x the 2 x 2 latent tokens of an image slot",
                    patch=(1, 1, 1), trained_size=TRAINED_SIZE_21, trained_frames=1)


def memory(mc: ModelConfig, dtype: torch.dtype) -> MemoryProfile:
    """Counted, not measured (s bytes an element, C the width, d the head dim), per target token:
        4C   the block's input stream (fp32), 4C the stream after the attention residual
        s C  the modulated input, s C the attention output, 3 x 3 s C the SwiGLU's gate, up and product
        4d   the RoPE table
    and, kept for the generation per CFG branch (context_kv), every block's prefix K/V: layers x 2 x
    TEXT_TOKENS_21 x C x s. VAE: the decoder's first stage at full resolution, as for Qwen-Image
    (61 c0 x 4 bytes a pixel, c0 its width), not measured on this VAE. Text encoder as Qwen-Image's count."""
    s = dtype.itemsize
    d = mc.dit
    dim = d.dim
    vae = mc.arch.vae
    c0 = (vae.decoder_base_dim or vae.base_dim) * vae.dim_mult[0]
    te = getattr(mc.arch.text_encoder, "text_config", mc.arch.text_encoder)
    n = TEXT_TOKENS_21
    return MemoryProfile(token_bytes=(8 + 11 * s) * dim + 4 * d.attention_head_dim,
                         attention_heads=d.num_attention_heads, pixel_bytes=61 * c0 * 4,
                         text_bytes=n * (4 * te.hidden_size + 3 * te.intermediate_size) * s + n * n * s,
                         context_bytes=d.num_layers * 2 * n * dim * s)


def describe(mc: ModelConfig) -> dict:
    d = mc.dit
    size = " Turbo" if mc.arch.turbo else ""
    return {"size": f"Qwen-Image-2.1{size} DiT (dim {d.dim}, {d.num_layers} layers)", "tokenizer": mc.files["tokenizer"]}
