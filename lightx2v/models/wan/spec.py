"""Wan2.1 declares itself: layouts, components, DiT format, geometry, defaults, presets, pipeline.

This is the one place the generic layers learn about Wan2.1 (lightx2v.models.registry).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Optional

import torch

from lightx2v.config import ModelConfig
from lightx2v.loading.components import FileComponentSpec
from lightx2v.models.registry import ComponentSpec, FamilySpec, Geometry, MemoryProfile, register_family
from lightx2v.models.wan import layouts
from lightx2v.models.wan.dit_format import WAN_DIT_FORMAT


def _files(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _read(files, key_map=None):
    from lightx2v.loading.state_dict import read_sharded, read_tensors, rename

    files = _files(files)
    sd = read_tensors(files[0]) if len(files) == 1 else read_sharded(files)
    return rename(sd, key_map) if key_map is not None else sd


# ---------------------------------------------------------------- components


def _build_t5(mc: ModelConfig):
    from lightx2v.models.wan.t5 import UMT5Encoder

    return UMT5Encoder(mc.arch.text_encoder)


def _read_t5(mc: ModelConfig):
    from lightx2v.models.wan.t5 import t5_key_from_transformers

    return _read(mc.files["text_encoder"], t5_key_from_transformers if mc.layout == "diffusers" else None)


def _build_vae(mc: ModelConfig):
    from lightx2v.models.wan.vae import WanVAE

    return WanVAE(mc.arch.vae)


def _read_vae(mc: ModelConfig):
    # the decoder's key numbering depends on num_res_blocks: the config's own rename
    return _read(mc.files["vae"], mc.arch.vae.key_from_diffusers if mc.layout == "diffusers" else None)


# ---- the tiny VAE (TAEHV, lightx2v.models.wan.taehv): shared by the Wan2.2 and HunyuanVideo-1.5 specs ----


def _build_tiny_vae(mc: ModelConfig):
    from lightx2v.models.wan.taehv import TinyVAE

    return TinyVAE(mc.tiny_vae.config)


def _read_tiny_vae(mc: ModelConfig):
    return _read(mc.tiny_vae.path)  # the released keys are the module's own


def wan_tiny_latents(mc: ModelConfig) -> tuple[str, tuple, tuple]:
    """(TAEHV latent space, mean, std) of a Wan model's VAE: Wan2.2's VAE (TI2V-5B) or Wan2.1's (Wan2.1,
    Wan2.2 A14B); raw VAE latents = DiT latents * std + mean."""
    from lightx2v.models.wan.vae22 import Wan22VAEConfig

    vae = mc.arch.vae
    return ("wan2.2" if isinstance(vae, Wan22VAEConfig) else "wan2.1"), vae.latents_mean, vae.latents_std


def attach_tiny_vae(mc: ModelConfig, path, kind: Optional[str] = None, latents=wan_tiny_latents) -> ModelConfig:
    """A tiny VAE file (.pth or .safetensors) to decode with: checked now against the latent space
    `latents(mc)` names (Wan: taew2_1 / lighttaew2_1, or taew2_2 / lighttaew2_2 for TI2V-5B), its kind
    told from its tensors unless `kind` is given (lightx2v.models.wan.taehv_files.inspect_tiny_vae)."""
    from lightx2v.models.wan.taehv import inspect_tiny_vae

    from lightx2v.errors import CheckpointError
    from lightx2v.models.wan.taehv import SPACES

    space, mean, std = latents(mc)
    want = SPACES[space]
    if len(mean) != want.latent_channels:  # a model not of the released latent size: no TAEHV fits it
        raise CheckpointError(f"this {mc.spec.title} model's VAE has {len(mean)} latent channels; the tiny VAEs for "
                              f"its latents ({want.kinds[0]} / {want.kinds[1]}) take {want.latent_channels}")
    tiny = inspect_tiny_vae(path, kind, space=space, latents_mean=mean, latents_std=std)
    return dataclasses.replace(mc, tiny_vae=tiny, files={**mc.files, "tiny_vae": tiny.path})


def tiny_vae_component(latents=wan_tiny_latents) -> FileComponentSpec:
    """The "tiny_vae" component (`tiny_vae=` / `--tiny-vae`): TAEHV decodes instead of the VAE, fp32 as
    the VAE (engine.vae_dtype applies to both); `latents(mc)` -> (space, mean, std) of the family."""
    return FileComponentSpec("tiny_vae", "tiny VAE", _build_tiny_vae, _read_tiny_vae, dtype=lambda dt: torch.float32,
                             needed=lambda mc: mc.tiny_vae is not None,
                             attach=functools.partial(attach_tiny_vae, latents=latents))


def vae_needed(mc: ModelConfig) -> bool:
    """With a tiny VAE the full one only encodes images (i2v, flf2v, ti2v, as LightX2V does): t2v skips it."""
    return mc.tiny_vae is None or mc.task != "t2v"


def _build_clip(mc: ModelConfig):
    from lightx2v.models.wan.clip import WanCLIPVision

    return WanCLIPVision(mc.arch.clip)


def _read_clip(mc: ModelConfig):
    from lightx2v.models.wan.clip import clip_key_from_official, clip_state_dict_from_transformers

    if mc.layout == "official":
        return _read(mc.files["clip"], clip_key_from_official)
    return clip_state_dict_from_transformers(_read(mc.files["clip"]))


COMPONENTS = (
    ComponentSpec("text_encoder", "text encoder", _build_t5, _read_t5),
    # the reference decodes in fp32 whatever the DiT runs in; with a tiny VAE the full one only
    # encodes the images of i2v / flf2v (as LightX2V does), so t2v does not load it
    ComponentSpec("vae", "VAE", _build_vae, _read_vae, dtype=lambda dt: torch.float32, needed=vae_needed),
    # the official code runs CLIP in fp16 (clip_dtype); fp32 stays fp32
    ComponentSpec("clip", "image encoder", _build_clip, _read_clip,
                  dtype=lambda dt: torch.float32 if dt == torch.float32 else torch.float16,
                  needed=lambda mc: mc.task != "t2v"),
    # --tiny-vae: TAEHV decodes instead of the VAE
    tiny_vae_component(),
)


# ---------------------------------------------------------------- refining: a user's DiT file, presets


def with_dit_file(mc: ModelConfig, dit_path) -> ModelConfig:
    """The folder's DiT replaced by a file the user gives (a distilled single file, a quantized
    file, ComfyUI or diffusers keys, shards, a block folder); it must fit the folder's model."""
    from lightx2v.errors import CheckpointError
    from lightx2v.loading.dit_files import inspect_dit_source

    src = inspect_dit_source(dit_path)
    if src.family != mc.family:
        raise CheckpointError(f"{dit_path} is a {src.looks_like}; the folder is a {mc.family} model")
    WAN_DIT_FORMAT.check_matches(src.config, mc.dit, str(dit_path))
    return dataclasses.replace(mc, files={**mc.files, "dit": tuple(str(p) for p in src.files)}, dit_source=src)


def _with_distill(mc: ModelConfig, preset: Optional[str], hints: tuple[str, ...]) -> ModelConfig:
    """Step-distilled sampling defaults when the user names a preset or the checkpoint says so
    (a LightX2V config, its distill_models/ folder); file or folder names are only a hint, and
    what was assumed is said in a warning."""
    from lightx2v.models.wan.distill import DISTILL_WEIGHT_FILES, distill_preset_for

    config = layouts.read_json(mc.root / "config.json") if mc.layout == "official" else None
    match = distill_preset_for(mc.task, preset=preset, config=config, root=mc.root, dit=mc.dit)
    for name in hints:
        if match is not None:
            break
        match = distill_preset_for(mc.task, name=name, dit=mc.dit)
    if match is None:
        return mc
    if match.notice:
        warnings.warn(match.notice, stacklevel=4)
    d = match.defaults
    defaults = dataclasses.replace(d.sampling_defaults(mc.defaults.negative_prompt, mc.defaults.fps),
                                   solver_options=d.solver_options())
    mc = dataclasses.replace(mc, defaults=defaults, distill=match)
    weights = [mc.root / rel for rel in DISTILL_WEIGHT_FILES if (mc.root / rel).is_file()]
    if weights and mc.dit_source is None:  # LightX2V's layout: the distilled DiT beside the base files
        mc = with_dit_file(mc, weights[0])
    return mc


def refine(mc: ModelConfig, *, dit_path=None, preset: Optional[str] = None, hints: tuple[str, ...] = ()) -> ModelConfig:
    """A user's DiT file, then a step-distilled preset (named, or recognised from the checkpoint)."""
    if dit_path is not None:
        mc = with_dit_file(mc, dit_path)
    names = tuple(Path(h).name for h in ((dit_path,) if dit_path else ()) + tuple(hints)) + (mc.root.name,)
    return _with_distill(mc, preset, names)


# ---------------------------------------------------------------- the rest


# Wan2.1 was trained up to 1280x720 (and 720x1280), 81 frames (the Wan2.1 report; 1.3B at 480p)
TRAINED_SIZE = (720, 1280)
TRAINED_FRAMES = 81


def geometry(mc: ModelConfig) -> Geometry:
    """Sides multiples of 16 (VAE stride 8 x patch 2), 4k+1 frames, latents of the VAE's z_dim; the
    DiT's RoPE covers `rope_max_seq_len` positions per axis."""
    vae = mc.arch.vae
    st, s = vae.scale_factor_temporal, vae.scale_factor_spatial
    return Geometry(size_multiple=s * mc.dit.patch_size[1], frame_step=st, latent_channels=vae.z_dim,
                    stride=(st, s, s), patch=mc.dit.patch_size, max_positions=mc.dit.rope_max_seq_len,
                    trained_size=TRAINED_SIZE, trained_frames=TRAINED_FRAMES)


def memory(mc: ModelConfig, dtype: torch.dtype) -> MemoryProfile:
    """Wan2.1's activation costs at compute dtype `dtype` (s bytes an element), in bytes.

    DiT, per token (one block's peak; fitted to peaks measured on an H200 for the 1.3B and 14B
    widths, bf16 and fp32, within 3%; see lightx2v/runtime/memory.py):
        self-attention  (26 + 2s) * dim          fp32 residual, modulated input, q/k/v, RoPE temporaries
        FFN             (12.5 + s) * dim + 2s * ffn_dim
    VAE decode, per output pixel of one chunk (4 frames at full resolution, fp32):
        61 * c0 * 4     c0 = the decoder's full-resolution width (96 for Wan2.1: 23.4 KB a pixel)
        tiny VAE (t2v with --tiny-vae; an image task still encodes with the VAE): 2 * 64 * 4 fp32 / p^2
        = 2 KB a pixel (p = patch size 1; 512 B for TI2V's taew2_2, p = 2), the input and output of its
        last conv before the head (64 channels, 4 frames), counted from the tensors alive, not measured
    T5, per prompt: text_len * (8 dim + 3 dim_ffn) * s + 3 fp32 [heads, text_len, text_len] tensors
    (position bias, scores, softmax).
    With token chunking (WanBlock._forward_chunked): (4 + 4s) * dim a token (the fp32 residual, q/k/v
    and the attention output; then the input and the new residual), plus one chunk at the formulas
    above (counted from the tensors alive: tests/runtime/test_chunking.py measures ~14 x dim in bf16
    with a chunk of 1/16 of the tokens). Cross-attention K/V kept for a generation (context_kv):
    2 * (text_len + image tokens) * dim * s per block and prompt.
    """
    s = dtype.itemsize
    d = mc.dit
    attention = (26 + 2 * s) * d.dim
    ffn = (12.5 + s) * d.dim + 2 * s * d.ffn_dim
    vae = mc.arch.vae
    c0 = (vae.decoder_dim or vae.dim) * vae.dim_mult[0]
    t5, n = mc.arch.text_encoder, d.text_len
    text = n * (8 * t5.dim + 3 * t5.dim_ffn) * s + 3 * t5.num_heads * n * n * 4
    pixel = 61 * c0 * vae.scale_factor_temporal
    if mc.tiny_vae is not None and mc.task == "t2v":
        from lightx2v.models.wan.taehv import decode_pixel_bytes

        pixel = decode_pixel_bytes(mc.tiny_vae.config)
    return MemoryProfile(token_bytes=max(attention, ffn), attention_heads=d.num_heads,
                         pixel_bytes=pixel, text_bytes=text, chunk_token_bytes=(4 + 4 * s) * d.dim,
                         context_bytes=d.num_layers * 2 * (d.text_len + d.image_tokens) * d.dim * s)


def describe(mc: ModelConfig) -> dict:
    from lightx2v.models.wan.presets import size_name

    return {"size": size_name(mc.dit), "tokenizer": mc.files["tokenizer"], "clip": mc.files.get("clip")}


def _pipeline():
    from lightx2v.pipelines.wan import WanPipeline

    return WanPipeline


def _presets() -> tuple[str, ...]:
    from lightx2v.models.wan.distill import DISTILL_PRESETS

    return tuple(DISTILL_PRESETS)


# the Wan DiT widths (Wan2.1 and Wan2.2 LoRAs share their key names, so either family may describe one)
WAN_WIDTHS = ((1536, "Wan2.1 1.3B"), (5120, "Wan2.1/2.2 14B"), (3072, "Wan2.2 5B"))

WAN21 = register_family(FamilySpec(
    name="wan2.1", title="Wan2.1", tasks=layouts.SUPPORTED_TASKS, layouts=("official", "diffusers"),
    recognise=layouts.recognise, model_config=layouts.read_config, refine=refine, geometry=geometry,
    pipeline=_pipeline, components=COMPONENTS, dit_format=WAN_DIT_FORMAT, describe=describe,
    presets=_presets(), memory=memory, widths=WAN_WIDTHS,
))
