"""The Wan2.2 video VAE (Wan2.2-TI2V-5B): 48 latent channels, 4x temporal and 16x16 spatial compression.

Design: `Wan22VAE` is the official `WanVAE_` of Wan-Video/Wan2.2 (`wan/modules/vae2_2.py`) with the
same parameter names, so `Wan2.2_VAE.pth` (a plain state dict, which the reference loads with
`load_state_dict(torch.load(path))`) loads with no renaming. It is built from the Wan2.1 blocks plus
the residual stages of `vae22_blocks.py`. Time is processed in chunks exactly as the reference does
(encode: frame 0 alone, then 4 frames per chunk; decode: one latent frame per chunk, the first
marked as such for the upsampling shortcuts), the causal history in an explicit `CausalCache`.
`encode` returns normalized latents `(mu - mean) / std` (the posterior mean, no sampling) and
`decode` takes them, as the DiT sees them in the official code and in diffusers.

A diffusers `AutoencoderKLWan(is_residual=True)` state dict is renamed to the official keys by
`vae22_key_from_diffusers`; `Wan22VAEConfig.from_diffusers` reads its config.json.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.wan.vae import (
    DIFFUSERS_VAE_FIELDS,
    RESNET_PARTS,
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    common_key_from_diffusers,
    latent_stats,
)
from lightx2v.models.wan.vae22_blocks import Decoder3d, Encoder3d, patchify, unpatchify
from lightx2v.models.wan.vae_blocks import CausalCache, CausalConv3d
from lightx2v.models.wan.vae_decode import VAEDecode

__all__ = [
    "WAN22_LATENTS_MEAN", "WAN22_LATENTS_STD", "Wan22VAE", "Wan22VAEConfig", "tiny_vae22_config",
    "vae22_config_from_state_dict", "vae22_key_from_diffusers",
]

# Per-channel statistics of the Wan2.2 latents (wan/modules/vae2_2.py `Wan2_2_VAE`, and the
# `latents_mean` / `latents_std` of the Wan2.2-TI2V-5B diffusers vae/config.json).
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip

RGB = 3
# Frames per encoder chunk after the first frame (the reference's constant, whatever the compression).
CHUNK_FRAMES = 4


@dataclass(frozen=True)
class Wan22VAEConfig:
    """Architecture of the Wan2.2 VAE (defaults: the released Wan2.2_VAE.pth).

    `dim` / `decoder_dim`: the encoder's and decoder's base widths (diffusers' base_dim /
    decoder_base_dim); `patch_size`: the side of the pixel patches folded into channels before the
    encoder (the encoder sees 3 * patch_size**2 channels); `clip_output`: decode clamps to [-1, 1]
    (the official code always does; see `from_diffusers`).
    """

    dim: int = 160
    decoder_dim: int = 256
    z_dim: int = 48
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # (sic) the official spelling
    patch_size: int = 2
    latents_mean: tuple[float, ...] = WAN22_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN22_LATENTS_STD
    clip_output: bool = True

    def __post_init__(self) -> None:
        n = len(self.dim_mult)
        if n < 2 or len(self.temperal_downsample) != n - 1:
            raise CheckpointError(
                f"Wan2.2 VAE config: temperal_downsample has {len(self.temperal_downsample)} entries, expected "
                f"len(dim_mult) - 1 = {n - 1} (dim_mult needs at least 2 entries, got {n})"
            )
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise CheckpointError(f"Wan2.2 VAE config: {name} has {len(getattr(self, name))} values, "
                                      f"expected z_dim = {self.z_dim}")
        if self.patch_size < 1 or min(self.dim, self.decoder_dim, self.z_dim, self.num_res_blocks, *self.dim_mult) < 1:
            raise CheckpointError("Wan2.2 VAE config: dim, decoder_dim, z_dim, dim_mult, num_res_blocks and "
                                  "patch_size must be positive")
        if self.scale_factor_temporal > CHUNK_FRAMES:
            raise CheckpointError(f"Wan2.2 VAE config: temperal_downsample {self.temperal_downsample} compresses time "
                                  f"{self.scale_factor_temporal}x; the VAE encodes {CHUNK_FRAMES} frames per chunk, so "
                                  "at most 2 stages may downsample time")
        self._check_shortcuts()

    def _check_shortcuts(self) -> None:
        """The parameter-free stage shortcuts average (encoder) or repeat (decoder) whole channel groups."""
        enc = [self.dim * m for m in (1, *self.dim_mult)]
        dec = [self.decoder_dim * m for m in (self.dim_mult[-1], *reversed(self.dim_mult))]
        last = len(self.dim_mult) - 1
        for i in range(last + 1):
            # a stage that resamples folds 2x2 (x2 in time) blocks; the last stage folds nothing
            f_enc = 1 if i == last else 4 * (2 if self.temperal_downsample[i] else 1)
            f_dec = 1 if i == last else 4 * (2 if self.temperal_upsample[i] else 1)
            if enc[i] * f_enc % enc[i + 1] or (i < last and dec[i + 1] * f_dec % dec[i]):
                raise CheckpointError(
                    f"Wan2.2 VAE config: stage {i} does not fit the parameter-free shortcuts (encoder {enc[i]} x "
                    f"{f_enc} -> {enc[i + 1]} channels, decoder {dec[i]} -> {dec[i + 1]} x {f_dec} must divide "
                    f"evenly); check dim / decoder_dim / dim_mult {self.dim_mult}"
                )

    @property
    def temperal_upsample(self) -> tuple[bool, ...]:
        """The decoder's temporal upsampling per stage: the encoder's, reversed."""
        return tuple(reversed(self.temperal_downsample))

    @property
    def in_channels(self) -> int:
        """Channels the encoder sees (and the decoder gives): RGB x patch_size**2 (12 for Wan2.2)."""
        return RGB * self.patch_size**2

    @property
    def scale_factor_temporal(self) -> int:
        """Video frames per latent frame (after the first): 4 for Wan2.2."""
        return 2 ** sum(bool(t) for t in self.temperal_downsample)

    @property
    def scale_factor_spatial(self) -> int:
        """Pixels per latent pixel along H and W: patch 2 x 2^3 stages = 16 for Wan2.2."""
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    def key_from_diffusers(self, key: str) -> str | None:
        """`vae22_key_from_diffusers` for this architecture: the renaming to pass when loading a
        diffusers `vae/` of this config."""
        return vae22_key_from_diffusers(key, self.num_res_blocks)

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "Wan22VAEConfig":
        """From the config.json of a diffusers `AutoencoderKLWan` with `is_residual: true` (the `vae/`
        folder of Wan2.2-TI2V-5B-Diffusers).

        Every field is honoured or refused by name (DIFFUSERS_VAE_FIELDS; '_' keys are metadata):
        `is_residual` must be true (false is the Wan2.1 VAE: WanVAEConfig); `patch_size` null means 1;
        `in_channels` / `out_channels` must be 3 * patch_size**2; the residual stages have no
        attention, so a non-empty `attn_scales` is refused; `dropout` does nothing at inference;
        `scale_factor_*` must be what the architecture gives. `clip_output` (written into the
        published Wan2.2 config by diffusers' pre-release conversion, as false; later diffusers
        ignore it and always clamp, as the official code does) is kept as stated.
        """
        where = "diffusers VAE config.json"
        unknown = [k for k in cfg if not k.startswith("_") and k not in DIFFUSERS_VAE_FIELDS]
        if unknown:
            raise CheckpointError(f"{where}: unknown field {unknown[0]!r}; supported: "
                                  f"{', '.join(DIFFUSERS_VAE_FIELDS)} and '_' metadata")
        if cfg.get("is_residual") is not True:
            raise CheckpointError(f"{where}: is_residual {cfg.get('is_residual')!r} is the Wan2.1 VAE; the Wan2.2 "
                                  "VAE has is_residual true")
        if cfg.get("attn_scales"):
            raise CheckpointError(f"{where}: attn_scales {cfg['attn_scales']} is not supported (the Wan2.2 VAE's "
                                  "residual stages have no attention); expected []")
        try:
            # an omitted field takes diffusers' own default (what AutoencoderKLWan would build), as
            # for the Wan2.1 VAE; the config.json files diffusers writes state every field
            patch, base = cfg.get("patch_size"), int(cfg.get("base_dim", 96))
            out = cls(
                dim=base,
                decoder_dim=int(cfg.get("decoder_base_dim") or base),
                z_dim=int(cfg.get("z_dim", 16)),
                dim_mult=tuple(int(m) for m in cfg.get("dim_mult", (1, 2, 4, 4))),
                num_res_blocks=int(cfg.get("num_res_blocks", 2)),
                temperal_downsample=tuple(bool(t) for t in cfg.get("temperal_downsample", (False, True, True))),
                patch_size=1 if patch is None else int(patch),
                latents_mean=tuple(float(v) for v in cfg.get("latents_mean", WAN21_LATENTS_MEAN)),
                latents_std=tuple(float(v) for v in cfg.get("latents_std", WAN21_LATENTS_STD)),
                clip_output=bool(cfg.get("clip_output", True)),
            )
            float(cfg.get("dropout", 0.0))  # training only
        except CheckpointError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where} has a malformed value ({exc})") from None
        for name in ("in_channels", "out_channels"):
            if cfg.get(name, RGB) != out.in_channels:
                raise CheckpointError(f"{where}: {name} {cfg.get(name, RGB)} does not fit patch_size "
                                      f"{out.patch_size}; expected 3 * patch_size**2 = {out.in_channels}")
        for name in ("scale_factor_temporal", "scale_factor_spatial"):
            stated = cfg.get(name)
            if stated is not None and stated != getattr(out, name):
                raise CheckpointError(f"{where}: {name} {stated} does not fit the architecture, which gives "
                                      f"{getattr(out, name)} (from patch_size / temperal_downsample / dim_mult)")
        return out


def tiny_vae22_config() -> Wan22VAEConfig:
    """A small VAE of the same structure (4x16x16, 48 latent channels, the real statistics) for demos and tests."""
    return Wan22VAEConfig(dim=16, decoder_dim=8)


class Wan22VAE(VAEDecode, nn.Module):
    """Official `WanVAE_` (Wan2.2): `encoder`, `conv1` (posterior 1x1x1), `conv2` (post-quant 1x1x1), `decoder`.

    `decode`, `decode_chunks`, `set_memory_format`, `set_tiling`, `_repeated_blocks`:
    lightx2v.models.wan.vae_decode."""

    def __init__(self, config: Wan22VAEConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = Encoder3d(c.in_channels, c.dim, c.z_dim * 2, c.dim_mult, c.num_res_blocks,
                                 c.temperal_downsample)
        self.conv1 = CausalConv3d(c.z_dim * 2, c.z_dim * 2, 1)
        self.conv2 = CausalConv3d(c.z_dim, c.z_dim, 1)
        self.decoder = Decoder3d(c.decoder_dim, c.z_dim, c.in_channels, c.dim_mult, c.num_res_blocks,
                                 c.temperal_upsample)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> normalized latents [B, z, 1 + (T-1)//4, H/16, W/16], float32.

        H and W must be multiples of 16 (scale_factor_spatial). The latent is the posterior mean `mu`,
        normalized as `(mu - mean) / std`. Frames past the last full chunk of 4 are ignored, as in
        the reference (pass T = 4k + 1).
        """
        s = self.config.scale_factor_spatial
        if video.ndim != 5 or video.shape[1] != RGB or video.shape[3] % s or video.shape[4] % s:
            raise InputError(f"VAE encode expects a video [B, 3, T, H, W] with H and W multiples of {s}, "
                             f"got shape {tuple(video.shape)}")
        cache = cache if cache is not None else CausalCache()
        x = patchify(video.to(self.conv1.weight.dtype), self.config.patch_size)  # [B, 12, T, H/2, W/2]
        mu = self._encode_tiled(x, cache)  # set_tiling (VAEDecode): tiles cut in patchified space; None: untiled
        mu = self._encode_frames(x, cache) if mu is None else mu
        mean, inv_std = latent_stats(self.config.latents_mean, self.config.latents_std, mu)
        return (mu.float() - mean) * inv_std

    def _encode_frames(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Patchified video [B, 12, T, H/2, W/2] -> posterior mean [B, z, T', H/16, W/16] (the time loop)."""
        cache.reset()
        n = CHUNK_FRAMES
        outs = []
        for i in range(1 + (x.shape[2] - 1) // n):
            # chunk 0 is frame 0 alone; chunk i > 0 is frames 1 + 4(i-1) .. 4i
            start, stop = (0 if i == 0 else 1 + n * (i - 1)), 1 + n * i
            cache.start_chunk()
            outs.append(self.encoder(x[:, :, start:stop], cache))
        cache.reset()
        return self.conv1(torch.cat(outs, dim=2))[:, : self.config.z_dim]  # [:z] mean, [z:] log-variance

    def _decode_one(self, chunk: torch.Tensor, cache: CausalCache, i: int) -> torch.Tensor:
        return self.decoder(chunk, cache, first_chunk=i == 0)

    def _to_pixels(self, y: torch.Tensor) -> torch.Tensor:
        # decode: video [B, 3, 1 + 4(T'-1), 16h, 16w], float32, clamped to [-1, 1] if config.clip_output
        # (the default, as the official code); unpatchify mixes no frames, so it runs per chunk
        video = unpatchify(y, self.config.patch_size).float()
        return video.clamp_(-1.0, 1.0) if self.config.clip_output else video


def vae22_config_from_state_dict(sd: Mapping[str, torch.Tensor], what: str = "Wan2.2 VAE") -> Wan22VAEConfig:
    """Wan22VAEConfig of an official-keys Wan2.2 VAE state dict (widths, stages, patch size from shapes;
    the latent statistics are the published Wan2.2 ones, which the official file does not carry)."""

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"{what} has no tensor {key!r}; is it a Wan2.2 VAE?")
        return sd[key]

    dim, in_ch = need("encoder.conv1.weight").shape[:2]
    z_dim = need("conv2.weight").shape[0]
    n_res = 0
    while f"encoder.downsamples.0.downsamples.{n_res}.residual.2.weight" in sd:
        n_res += 1
    widths, temporal = [], []
    # stage i: its last residual block's width, and a time_conv in its resample if it downsamples time
    while (w := sd.get(f"encoder.downsamples.{len(widths)}.downsamples.{n_res - 1}.residual.2.weight")) is not None:
        temporal.append(f"encoder.downsamples.{len(widths)}.downsamples.{n_res}.time_conv.weight" in sd)
        widths.append(w.shape[0])
    patch = round((in_ch / RGB) ** 0.5)
    if n_res == 0 or len(widths) < 2 or any(w % dim for w in widths) or RGB * patch**2 != in_ch:
        raise CheckpointError(f"{what}: cannot read the encoder's stages from the tensors; is it a Wan2.2 VAE?")
    dim_mult = tuple(w // dim for w in widths)
    decoder_width = need("decoder.head.0.gamma").shape[0]  # = decoder_dim * dim_mult[0]
    if z_dim != len(WAN22_LATENTS_MEAN):
        raise CheckpointError(f"{what}: z_dim {z_dim} has no published latent statistics (the Wan2.2 VAE has "
                              f"{len(WAN22_LATENTS_MEAN)}); a file of this layout carries none")
    return Wan22VAEConfig(dim=dim, decoder_dim=decoder_width // dim_mult[0], z_dim=z_dim, dim_mult=dim_mult,
                          num_res_blocks=n_res, temperal_downsample=tuple(temporal[:-1]), patch_size=patch)


# ---- diffusers AutoencoderKLWan(is_residual=True) -> official keys --------------------------------

_DOWN_RESNET = re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$")
_DOWN_SAMPLER = re.compile(r"^encoder\.down_blocks\.(\d+)\.downsampler\.(.+)$")
_UP_RESNET = re.compile(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$")
_UP_SAMPLER = re.compile(r"^decoder\.up_blocks\.(\d+)\.upsampler\.(.+)$")


def vae22_key_from_diffusers(key: str, num_res_blocks: int = 2) -> str | None:
    """Official `Wan2.2_VAE.pth` key of a diffusers `AutoencoderKLWan(is_residual=True)` key.

    diffusers' `down_blocks[i]` (resnets, then `downsampler`) is the official `downsamples[i]`, whose
    own `downsamples` Sequential lists the resnets then the resample at index num_res_blocks; likewise
    `up_blocks[i]` (num_res_blocks + 1 resnets, then `upsampler`) is `upsamples[i].upsamples`. Pass the
    checkpoint's num_res_blocks (`Wan22VAEConfig.key_from_diffusers` does). Unknown keys are returned
    unchanged so that loading reports them.
    """
    if (common := common_key_from_diffusers(key)) is not None:
        return common
    if m := _DOWN_RESNET.match(key):
        return f"encoder.downsamples.{m[1]}.downsamples.{m[2]}.{RESNET_PARTS.get(m[3], m[3])}"
    if m := _DOWN_SAMPLER.match(key):
        return f"encoder.downsamples.{m[1]}.downsamples.{num_res_blocks}.{m[2]}"
    if m := _UP_RESNET.match(key):
        return f"decoder.upsamples.{m[1]}.upsamples.{m[2]}.{RESNET_PARTS.get(m[3], m[3])}"
    if m := _UP_SAMPLER.match(key):
        return f"decoder.upsamples.{m[1]}.upsamples.{num_res_blocks + 1}.{m[2]}"
    return key
