"""Qwen-Image declares itself: layout, components, DiT format, geometry, defaults, pipeline.

Text-to-image (Qwen/Qwen-Image, -2512) and image editing (Qwen/Qwen-Image-Edit, -Edit-2509, -Edit-2511)
from the released diffusers-format folders. The one place the generic layers learn about Qwen-Image
(lightx2v.models.registry).
"""

from __future__ import annotations

import torch

from lightx2v.config import ModelConfig
from lightx2v.models.qwen_image import layouts
from lightx2v.models.qwen_image.dit_format import QWEN_IMAGE_DIT_FORMAT
from lightx2v.models.registry import ComponentSpec, FamilySpec, Geometry, register_family


def _read(files, key_map=None):
    from lightx2v.models.wan.spec import _read as read

    return read(files, key_map)


def _build_text_encoder(mc: ModelConfig):
    from lightx2v.models.qwen_image.text import QwenTextEncoder

    # the edit models' encoder sees the input images: its vision tower is built (and read) too
    return QwenTextEncoder(mc.arch.text_encoder, vision=mc.arch.edit is not None)


def _read_text_encoder(mc: ModelConfig):
    from lightx2v.models.qwen_image.text import text_key_from_file, text_key_with_vision

    return _read(mc.files["text_encoder"], text_key_from_file if mc.arch.edit is None else text_key_with_vision)


def _build_vae(mc: ModelConfig):
    from lightx2v.models.wan.vae import WanVAE

    return WanVAE(mc.arch.vae)  # the Qwen-Image VAE is the Wan2.1 network (models/qwen_image/vae.py)


def _read_vae(mc: ModelConfig):
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
    s, p = mc.arch.vae.scale_factor_spatial, mc.dit.patch_size
    return Geometry(size_multiple=s * p, frame_step=1, latent_channels=mc.arch.vae.z_dim, stride=(1, s, s),
                    max_frames=1, size_reason=f"VAE stride {s} x patch {p}", patch=(1, p, p),
                    trained_size=TRAINED_SIZE, trained_frames=1)


def refine(mc: ModelConfig, *, dit_path=None, preset=None, hints=()) -> ModelConfig:
    from lightx2v.errors import InputError

    if dit_path is not None:
        raise InputError("--dit-path is not supported for Qwen-Image yet (the folder's transformer/ is used)",
                         field="dit_path")
    if preset is not None:
        raise InputError(f"Qwen-Image has no preset {preset!r} (none yet)", field="preset")
    return mc


def describe(mc: ModelConfig) -> dict:
    return {"size": QWEN_IMAGE_DIT_FORMAT.describe(mc.dit), "tokenizer": mc.files["tokenizer"]}


def _pipeline():
    from lightx2v.pipelines.qwen_image_edit import QwenImageTasks

    return QwenImageTasks  # QwenImagePipeline (t2i) or QwenImageEditPipeline (edit), by mc.task


QWEN_IMAGE = register_family(FamilySpec(
    name="qwen-image", title="Qwen-Image", tasks=layouts.SUPPORTED_TASKS, layouts=("diffusers",),
    recognise=layouts.recognise, model_config=layouts.read_config, refine=refine, geometry=geometry,
    pipeline=_pipeline, components=COMPONENTS, dit_format=QWEN_IMAGE_DIT_FORMAT, describe=describe,
))
