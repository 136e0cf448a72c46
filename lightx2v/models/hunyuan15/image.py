"""HunyuanVideo-1.5 image-to-video conditioning, as diffusers' HunyuanVideo15ImageToVideoPipeline builds it.

    size     no size given: the resolution bucket of the transformer's `target_size` whose aspect ratio
             is closest to the image's (layouts.default_size); a size given: that size
    crop     the image scaled (Lanczos) to cover the frame, keeping its ratio, and centre-cropped
             (`cover_crop`); every later step sees this cropped image
    SigLIP   the cropped image through the folder's SiglipImageProcessor and SiglipVisionModel
             (transformers', we do not own them): last_hidden_state [1, 729, 1152], the DiT's image
             tokens, the same for the conditional and unconditional branches
    y        the cropped image in [-1, 1] as a one-frame video -> VAE posterior mean * scaling factor
             [1, 32, 1, h, w] in latent frame 0, zeros in the others, and a mask channel that is 1 on
             frame 0: y [1, 33, T', h, w], concatenated after the noisy latents ([x, latents, mask])

Design: functions of tensors and PIL images; the pipeline (lightx2v/pipelines/hunyuan15.py) places
the encoders and calls them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def cover_crop(image, height: int, width: int):
    """PIL image -> PIL image of exactly width x height: scaled (Lanczos) so it covers the frame with
    its aspect ratio kept, then centred; integer sizes as diffusers' `_resize_and_crop` computes them."""
    from PIL import Image

    if width / height > image.width / image.height:  # the frame is wider: fit the width
        sw, sh = width, image.height * width // image.width
    else:
        sw, sh = image.width * height // image.height, height
    scaled = image.resize((sw, sh), resample=Image.LANCZOS)
    out = Image.new("RGB", (width, height))
    out.paste(scaled, box=(width // 2 - sw // 2, height // 2 - sh // 2))
    return out


@torch.no_grad()
def siglip_states(encoder: nn.Module, processor: Any, image) -> torch.Tensor:
    """The cropped PIL image -> SigLIP's last hidden states [1, N, D] (N 729, D 1152 for the release)."""
    pixels = processor.preprocess(images=image, do_resize=True, return_tensors="pt", do_convert_rgb=True)
    weight = next(encoder.parameters())
    pv = pixels["pixel_values"].to(weight.device, weight.dtype)  # [1, 3, S, S]
    return encoder(pixel_values=pv).last_hidden_state


def image_condition(image_latents: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """image_latents [B, z, 1, h, w] -> y [B, z + 1, T', h, w]: the latents in frame 0 and zeros after,
    then a mask channel, 1 on frame 0 (the given frame) and 0 on the frames to generate."""
    b, z, _, h, w = image_latents.shape
    cond = image_latents.new_zeros((b, z, latent_frames, h, w))
    cond[:, :, :1] = image_latents
    mask = image_latents.new_zeros((b, 1, latent_frames, h, w))
    mask[:, :, 0] = 1.0
    return torch.cat([cond, mask], dim=1)
