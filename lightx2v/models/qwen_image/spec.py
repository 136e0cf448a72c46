"""Qwen-Image declares itself: layout, components, DiT format, geometry, defaults, presets, pipeline.

Text-to-image (Qwen/Qwen-Image, -2512) and image editing (Qwen/Qwen-Image-Edit, -Edit-2509, -Edit-2511)
from the released diffusers-format folders; the DiT may come from a single file instead (`--dit-path`:
LightX2V's fp8 files, ComfyUI's), and the Lightning presets (4 / 8 steps, no CFG: models/qwen_image/
lightning.py) sample as the Lightning LoRAs were distilled. The one place the generic layers learn about
Qwen-Image (lightx2v.models.registry).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from lightx2v.config import ModelConfig
from lightx2v.models.qwen_image import layouts, spec21
from lightx2v.models.qwen_image.dit_format import QWEN_IMAGE_DIT_FORMAT
from lightx2v.models.registry import ComponentSpec, FamilySpec, Geometry, MemoryProfile, register_family


def _read(files, key_map=None):
    from lightx2v.models.wan.spec import _read as read

    return read(files, key_map)


def _build_text_encoder(mc: ModelConfig):
    from lightx2v.models.qwen_image.text import QwenTextEncoder

    if spec21.is_21(mc):  # qwen-image 2.1: Qwen3-VL (text21.py)
        return spec21.build_text_encoder(mc)

    # the edit models' encoder sees the input images: its vision tower is built (and read) too
    return QwenTextEncoder(mc.arch.text_encoder, vision=mc.arch.edit is not None)


def _read_text_encoder(mc: ModelConfig):
    from lightx2v.models.qwen_image.text import text_key_from_file, text_key_with_vision

    if spec21.is_21(mc):
        return spec21.read_text_encoder(mc)

    return _read(mc.files["text_encoder"], text_key_from_file if mc.arch.edit is None else text_key_with_vision)


def _build_vae(mc: ModelConfig):
    from lightx2v.models.wan.vae import WanVAE

    if spec21.is_21(mc):  # qwen-image 2.1: its own VAE (vae21.py)
        return spec21.build_vae(mc)

    return WanVAE(mc.arch.vae)  # the Qwen-Image VAE is the Wan2.1 network (models/qwen_image/vae.py)


def _read_vae(mc: ModelConfig):
    if spec21.is_21(mc):
        return spec21.read_vae(mc)
    return _read(mc.files["vae"], mc.arch.vae.key_from_diffusers)


COMPONENTS = (
    ComponentSpec("text_encoder", "text encoder", _build_text_encoder, _read_text_encoder),
    # the reference decodes in the pipeline's dtype; fp32 here, as every VAE of lightx2v (engine.vae_dtype changes it)
    ComponentSpec("vae", "VAE", _build_vae, _read_vae, dtype=lambda dt: torch.float32),
)

# Qwen-Image's model card sizes go up to 1664 x 928 / 1328 x 1328
TRAINED_SIZE = (1328, 1328)


def geometry(mc: ModelConfig) -> Geometry:
    """Sides multiples of 16 (VAE stride 8 x patch 2), one frame, the VAE's latent channels."""
    if spec21.is_21(mc):  # qwen-image 2.1: multiples of 32
        return spec21.geometry(mc)
    s, p = mc.arch.vae.scale_factor_spatial, mc.dit.patch_size
    return Geometry(size_multiple=s * p, frame_step=1, latent_channels=mc.arch.vae.z_dim, stride=(1, s, s),
                    max_frames=1, size_reason=f"VAE stride {s} x patch {p}", patch=(1, p, p),
                    trained_size=TRAINED_SIZE, trained_frames=1)


def with_dit_file(mc: ModelConfig, dit_path) -> ModelConfig:
    """The folder's DiT replaced by a file the user gives (`--dit-path`): LightX2V's fp8 single files,
    ComfyUI's (`model.diffusion_model.` keys, bf16 / plain fp8 / scaled fp8), shards or a block folder.
    What it is comes from its tensors (lightx2v.loading.dit_files), never its name; it must be the
    folder's model (the fields shapes cannot tell, RoPE axes and zero_cond_t, are the folder's)."""
    from lightx2v.errors import CheckpointError
    from lightx2v.loading.dit_files import inspect_dit_source

    src = inspect_dit_source(dit_path)
    if src.family != mc.family:
        raise CheckpointError(f"{dit_path} is a {src.looks_like}; the folder is a {mc.spec.title} model")
    QWEN_IMAGE_DIT_FORMAT.check_matches(src.config, mc.dit, str(dit_path))
    return dataclasses.replace(mc, files={**mc.files, "dit": tuple(str(p) for p in src.files)}, dit_source=src)


def refine(mc: ModelConfig, *, dit_path=None, preset=None, hints=()) -> ModelConfig:
    """A user's DiT file, then a Lightning preset: named, or assumed (with a notice) from the name of a
    LoRA or DiT file the user gives (lightx2v.models.qwen_image.lightning)."""
    from lightx2v.models.qwen_image.lightning import LightningMatch, apply_preset, chosen_preset, preset_from_name

    if dit_path is not None:
        mc = with_dit_file(mc, dit_path)
    if preset is not None:
        return apply_preset(mc, LightningMatch(chosen_preset(preset), f"preset {preset!r}"))
    for name in ((dit_path,) if dit_path else ()) + tuple(hints):
        match = preset_from_name(str(name))
        if match is not None:
            warnings.warn(match.notice, stacklevel=4)
            return apply_preset(mc, match)
    return mc


# text tokens the estimate assumes: the longest prompt the encoder takes (diffusers' tokenizer_max_length
# 1024) plus the template's dropped system part (34); the DiT sees at most 1024 of them
TEXT_TOKENS_ENCODED, TEXT_TOKENS_DIT = 1024 + 34, 1024


def memory(mc: ModelConfig, dtype: torch.dtype) -> MemoryProfile:
    """Qwen-Image's activation costs at compute dtype `dtype` (s bytes an element), in bytes, one image.

    DiT, per token of the joint sequence (text + image: both streams are dim C wide and go through the
    same kinds of layers), counted from the tensors alive at the block's peak, the image MLP's GELU:
        4C     forward's embedded stream (held by forward while run_blocks runs: from the 2nd block on)
        4C     the block's input stream (the caller's), 4C the stream after the attention residual
        s C    the attention output (a local of the block, alive through the MLP)
        9 s C  the modulated input, the MLP's hidden state (4C) and its GELU (4C)
        4 d    the cached RoPE table (cos, sin fp32 of the head dim d)
    = (12 + 10 s) C + 4 d a token (fp32 52 C, bf16 32 C), checked against a live-tensor tracker in
    tests/runtime/test_qwen_image_engine.py (within 3%). The estimate counts the image tokens only
    (Geometry.token_grid), so the text's share is folded in per image token below, for the longest
    prompt (TEXT_TOKENS_DIT): at 1328x1328 (6889 tokens) that is +15%.
    The attention (SDPA) peak is lower: 8 + 5 s C (q, k, v, its output and the modulated input).
    VAE decode (the Wan2.1 network, one frame): one chunk's working set as Wan2.1's first chunk
    measured (61 c0 x 4 bytes a pixel, c0 the decoder's full-resolution width; models/wan/spec.py),
    not measured on Qwen-Image's VAE.
    Text encoder (Qwen2.5-VL's language model, transformers, SDPA), per prompt: TEXT_TOKENS_ENCODED
    x (4 hidden + 3 intermediate) x s (the residual, the normed input, the attention output and q/k/v;
    the MLP's gate, up and their product) + the causal mask [n, n] in s: counted, not measured.
    Not counted: num_images N multiplies the denoise and decode stages (the estimate is for one image).
    """
    if spec21.is_21(mc):  # qwen-image 2.1's own count
        return spec21.memory(mc, dtype)
    s = dtype.itemsize
    d = mc.dit
    dim = d.num_attention_heads * d.attention_head_dim
    per_token = (12 + 10 * s) * dim + 4 * d.attention_head_dim
    geo = geometry(mc)
    _, th, tw = geo.token_grid(1, *TRAINED_SIZE)
    text_share = TEXT_TOKENS_DIT / (th * tw)  # the text tokens per image token at the trained size
    vae = mc.arch.vae
    c0 = (getattr(vae, "decoder_dim", None) or vae.dim) * vae.dim_mult[0]
    te = getattr(mc.arch.text_encoder, "text_config", mc.arch.text_encoder)
    n = TEXT_TOKENS_ENCODED
    text = n * (4 * te.hidden_size + 3 * te.intermediate_size) * s + n * n * s
    return MemoryProfile(token_bytes=per_token * (1 + text_share), attention_heads=d.num_attention_heads,
                         pixel_bytes=61 * c0 * 4, text_bytes=text)


def describe(mc: ModelConfig) -> dict:
    if spec21.is_21(mc):
        return spec21.describe(mc)
    return {"size": QWEN_IMAGE_DIT_FORMAT.describe(mc.dit), "tokenizer": mc.files["tokenizer"]}


# the Lightning presets (lightx2v.models.qwen_image.lightning.LIGHTNING_PRESETS; the manifest lists the same)
PRESETS = ("qwen-image-lightning-4step", "qwen-image-lightning-8step")


def _pipeline():
    from lightx2v.pipelines.qwen_image_edit import QwenImageTasks

    return QwenImageTasks  # QwenImagePipeline (t2i) or QwenImageEditPipeline (edit), by mc.task


QWEN_IMAGE = register_family(FamilySpec(
    name="qwen-image", title="Qwen-Image", tasks=layouts.SUPPORTED_TASKS, layouts=("diffusers",),
    recognise=layouts.recognise, model_config=layouts.read_config, refine=refine, geometry=geometry,
    pipeline=_pipeline, components=COMPONENTS, dit_format=QWEN_IMAGE_DIT_FORMAT, describe=describe,
    memory=memory, presets=PRESETS, widths=((3072, "Qwen-Image 20B"),),
))
