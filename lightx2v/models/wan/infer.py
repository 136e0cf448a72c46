"""Architecture configs read off tensor shapes, for files that ship without a config.

The official Wan layout has no config for its text encoder (models_t5_umt5-xxl-enc-bf16.pth) or
VAE (Wan2.1_VAE.pth): the reference code hard-codes umt5-xxl and the 96-wide VAE. We read the
sizes from the tensors instead (mmap: only metadata is touched), so a checkpoint of another size
loads too, and a file that is not what it claims fails with a clear message.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from lightx2v.errors import CheckpointError


def _need(sd: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{what} has no tensor {key!r}; is it the right file?")
    return sd[key]


def t5_config_from_state_dict(sd: Mapping[str, torch.Tensor], what: str = "text encoder"):
    """UMT5Config of an official-keys T5 encoder state dict."""
    from lightx2v.models.wan.t5 import UMT5Config

    vocab, dim = _need(sd, "token_embedding.weight", what).shape
    layers = len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    dim_attn = _need(sd, "blocks.0.attn.q.weight", what).shape[0]
    dim_ffn = _need(sd, "blocks.0.ffn.fc1.weight", what).shape[0]
    shared = "pos_embedding.embedding.weight" in sd
    pos = sd["pos_embedding.embedding.weight"] if shared else _need(sd, "blocks.0.pos_embedding.embedding.weight", what)
    buckets, heads = pos.shape
    return UMT5Config(vocab_size=vocab, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn, num_heads=heads,
                      num_layers=layers, num_buckets=buckets, shared_pos=shared)


def vae_config_from_state_dict(sd: Mapping[str, torch.Tensor], what: str = "VAE"):
    """WanVAEConfig of an official-keys Wan2.1 VAE state dict (base width and latent channels)."""
    from lightx2v.models.wan.vae import WanVAEConfig

    dim = _need(sd, "encoder.conv1.weight", what).shape[0]
    z_dim = _need(sd, "conv2.weight", what).shape[0]
    # encoder.downsamples is [res, res, resample, res, res, resample, ..., res, res]: the residual
    # blocks' output widths give dim_mult, their count per stage num_res_blocks, and a resample with
    # a time_conv a temporal downsample.
    n = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))), default=-1)
    stages, blocks, temporal = [], 0, []
    for j in range(n):
        conv = sd.get(f"encoder.downsamples.{j}.residual.2.weight")
        if conv is not None:
            blocks += 1
            width = conv.shape[0]
            if j == n - 1 or f"encoder.downsamples.{j + 1}.residual.2.weight" not in sd:
                stages.append((width, blocks))
                blocks = 0
        else:
            temporal.append(f"encoder.downsamples.{j}.time_conv.weight" in sd)
    if not stages or len({b for _, b in stages}) != 1 or any(w % dim for w, _ in stages):
        raise CheckpointError(f"{what}: cannot read the encoder's stages from the tensors; is it a Wan2.1 VAE?")
    dim_mult = tuple(w // dim for w, _ in stages)
    # the decoder's last stage is decoder_dim * dim_mult[0] wide (its own base width, as diffusers' decoder_base_dim)
    decoder_width = _need(sd, "decoder.head.0.gamma", what).shape[0]
    if decoder_width % dim_mult[0]:
        raise CheckpointError(f"{what}: the decoder's output width {decoder_width} is not a multiple of "
                              f"dim_mult[0] = {dim_mult[0]}; is it a Wan2.1 VAE?")
    return WanVAEConfig(dim=dim, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=stages[0][1],
                        temperal_downsample=tuple(temporal), decoder_dim=decoder_width // dim_mult[0])
