"""The Qwen-Image VAE: the Wan2.1 VAE network, used on single frames, read from a diffusers `vae/` folder.

Design: diffusers' `AutoencoderKLQwenImage` (the layout every Qwen-Image release ships: vae/config.json
and diffusion_pytorch_model.safetensors) is the same network as its `AutoencoderKLWan` of the Wan2.1
VAE, module for module: the same parameter names and shapes, and the same outputs on the same weights
(tests/models/test_qwen_image_vae.py checks both against our module). So there is no second copy:
the Qwen-Image VAE *is* `lightx2v.models.wan.vae.WanVAE`, loaded through the Wan2.1 diffusers key map
(`vae_key_from_diffusers`, diffusers' names -> the official Wan names our module uses), with a config
read from the Qwen-Image file (`config_from_diffusers`: its field names differ a little, e.g.
`input_channels`; every field is honoured or refused by name).

An image is a video of one frame: `encode_image` / `decode_image` add and drop the time axis. The
latents the DiT sees are normalized with the file's `latents_mean` / `latents_std`, as diffusers'
Qwen-Image pipelines normalize them ((mu - mean) / std before the DiT, z * std + mean before decode).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.wan.vae import WanVAE, WanVAEConfig, diffusers_sizes

__all__ = ["QWEN_VAE_FIELDS", "config_from_diffusers", "decode_image", "encode_image"]

# Every argument of diffusers' AutoencoderKLQwenImage (0.35 - 0.42).
QWEN_VAE_FIELDS = (
    "base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample", "dropout",
    "input_channels", "latents_mean", "latents_std",
)
CLASS_NAME = "AutoencoderKLQwenImage"


def config_from_diffusers(cfg: Mapping[str, Any], where: str = "vae/config.json") -> WanVAEConfig:
    """The `WanVAEConfig` of a Qwen-Image vae/config.json (diffusers' AutoencoderKLQwenImage).

    Honoured: base_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample, latents_mean/std (the
    released defaults where omitted: diffusers' own). `dropout` does nothing at inference. Refused by
    name: another `_class_name`, an unknown field, `input_channels` other than 3 (the released VAE is
    RGB; 4 would be a layered/RGBA variant), and a non-empty `attn_scales` (diffusers builds no
    attention in the stages of this decoder; our Wan decoder would)."""
    cls = cfg.get("_class_name", CLASS_NAME)
    if cls != CLASS_NAME:
        raise CheckpointError(f"{where} is a {cls}, expected an {CLASS_NAME}")
    unknown = [k for k in cfg if not k.startswith("_") and k not in QWEN_VAE_FIELDS]
    if unknown:
        raise CheckpointError(f"{where}: unknown field {unknown[0]!r}; an {CLASS_NAME} config has "
                              f"{', '.join(QWEN_VAE_FIELDS)} and '_' metadata")
    if cfg.get("input_channels", 3) != 3:
        raise CheckpointError(f"{where}: input_channels {cfg['input_channels']!r} is not supported; the "
                              "Qwen-Image VAE takes RGB images (input_channels 3)")
    if cfg.get("attn_scales"):
        raise CheckpointError(f"{where}: attn_scales {cfg['attn_scales']} is not supported; expected [] "
                              "(the released VAE has attention in its middle blocks only)")
    try:
        out = WanVAEConfig(**diffusers_sizes(cfg))
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has a malformed value ({exc})") from None
    return out


@torch.no_grad()
def encode_image(vae: WanVAE, images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> normalized latents [B, z, 1, H/8, W/8] float32 (the posterior
    mean, (mu - mean) / std: what the DiT is given)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"VAE encode expects images [B, 3, H, W], got shape {tuple(images.shape)}")
    return vae.encode(images.unsqueeze(2))


@torch.no_grad()
def decode_image(vae: WanVAE, latents: torch.Tensor) -> torch.Tensor:
    """Normalized latents [B, z, 1, h, w] -> images [B, 3, 8h, 8w] float32 in [-1, 1]."""
    if latents.ndim != 5 or latents.shape[2] != 1:
        raise InputError(f"VAE decode expects image latents [B, z, 1, h, w], got shape {tuple(latents.shape)}")
    return vae.decode(latents)[:, :, 0]
