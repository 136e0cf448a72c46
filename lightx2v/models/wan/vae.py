"""The Wan2.1 video VAE: 3D causal encoder/decoder, 4x temporal and 8x8 spatial compression.

Design: `WanVAE` is the official `WanVAE_` of Wan-Video/Wan2.1 (`wan/modules/vae.py`) with the same
parameter names, so `Wan2.1_VAE.pth` (a plain state dict) loads with no renaming. Time is processed
in chunks exactly as the reference does (encode: frame 0 alone, then 4 frames per chunk; decode:
one latent frame per chunk), the causal history travelling in an explicit `CausalCache` that is
reset at the start of each call. The latent normalisation constants come from the config (no
buffers outside the checkpoint): `encode` returns normalized latents `(mu - mean) / std` and
`decode` takes them, which is what the DiT sees in both the official code and diffusers.

The diffusers layout (`AutoencoderKLWan`) is renamed to the official keys by `vae_key_from_diffusers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.wan.vae_blocks import CausalCache, CausalConv3d, Decoder3d, Encoder3d
from lightx2v.models.wan.vae_decode import VAEDecode

__all__ = [
    "CausalCache", "WanVAE", "WanVAEConfig", "common_key_from_diffusers", "latent_stats", "tiny_vae_config",
    "vae_key_from_diffusers",
]

# Per-channel statistics of the Wan2.1 latents (wan/modules/vae.py `WanVAE`, and the
# `latents_mean` / `latents_std` of diffusers' AutoencoderKLWan config).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


# Every argument of diffusers' AutoencoderKLWan (0.33 - 0.42), and `clip_output` (Wan2.2 configs
# written by diffusers 0.35 dev versions: whether decode clamps to [-1, 1]).
DIFFUSERS_VAE_FIELDS = (
    "base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample",
    "dropout", "latents_mean", "latents_std", "is_residual", "in_channels", "out_channels", "patch_size",
    "scale_factor_temporal", "scale_factor_spatial", "clip_output",
)


@dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of the Wan2.1 VAE (defaults: the released Wan2.1_VAE.pth).

    `decoder_dim`: the decoder's base width where it differs from the encoder's `dim` (diffusers'
    `decoder_base_dim`); None: the same.
    """

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # (sic) the official spelling
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    decoder_dim: int | None = None

    def __post_init__(self) -> None:
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise CheckpointError(
                f"VAE config: temperal_downsample has {len(self.temperal_downsample)} entries, "
                f"expected len(dim_mult) - 1 = {len(self.dim_mult) - 1}"
            )
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise CheckpointError(
                    f"VAE config: {name} has {len(getattr(self, name))} values, expected z_dim = {self.z_dim}"
                )
        if self.decoder_dim == self.dim:
            object.__setattr__(self, "decoder_dim", None)

    @property
    def scale_factor_temporal(self) -> int:
        """Video frames per latent frame (after the first): 4 for Wan2.1."""
        return 2 ** sum(bool(t) for t in self.temperal_downsample)

    @property
    def scale_factor_spatial(self) -> int:
        """Pixels per latent pixel along H and W: 8 for Wan2.1."""
        return 2 ** (len(self.dim_mult) - 1)

    def key_from_diffusers(self, key: str) -> str | None:
        """`vae_key_from_diffusers` for this architecture (the decoder's flat indices depend on
        num_res_blocks): the renaming to pass when loading a diffusers `vae/` of this config."""
        return vae_key_from_diffusers(key, self.num_res_blocks)

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "WanVAEConfig":
        """From the config.json of a diffusers `AutoencoderKLWan` (the `vae/` folder).

        Every field is honoured or refused by name (DIFFUSERS_VAE_FIELDS; '_' keys are metadata):
        `dropout` does nothing at inference; Wan2.2-style VAEs (`is_residual`, `patch_size` > 1) are
        another architecture; diffusers' decoder has no attention in its stages, so a non-empty
        `attn_scales` (attention in the encoder only) is refused; `scale_factor_*` must be what
        dim_mult / temperal_downsample give.
        """
        where = "diffusers VAE config.json"
        unknown = [k for k in cfg if not k.startswith("_") and k not in DIFFUSERS_VAE_FIELDS]
        if unknown:
            raise CheckpointError(f"{where}: unknown field {unknown[0]!r}; supported: "
                                  f"{', '.join(DIFFUSERS_VAE_FIELDS)} and '_' metadata")
        if cfg.get("is_residual"):
            raise CheckpointError(f"{where}: is_residual true is a Wan2.2-style residual VAE; only the Wan2.1 VAE "
                                  "(is_residual false) is supported")
        if cfg.get("patch_size") not in (None, 1):
            raise CheckpointError(f"{where}: patch_size {cfg['patch_size']} is a Wan2.2-style patchified VAE; "
                                  "only the Wan2.1 VAE (patch_size null) is supported")
        for name in ("in_channels", "out_channels"):
            if cfg.get(name, 3) != 3:
                raise CheckpointError(f"{where}: {name} {cfg[name]} is not supported; the Wan2.1 VAE has 3 (RGB)")
        if cfg.get("attn_scales"):
            raise CheckpointError(f"{where}: attn_scales {cfg['attn_scales']} is not supported (diffusers puts "
                                  "attention in the encoder's stages only); expected []")
        if cfg.get("clip_output", True) is not True:
            raise CheckpointError(f"{where}: clip_output {cfg['clip_output']!r} is not supported; the Wan2.1 VAE "
                                  "clamps decoded videos to [-1, 1] (clip_output true)")
        try:
            decoder_dim = cfg.get("decoder_base_dim")
            out = cls(**diffusers_sizes(cfg), decoder_dim=None if decoder_dim is None else int(decoder_dim))
        except CheckpointError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where} has a malformed value ({exc})") from None
        for name in ("scale_factor_temporal", "scale_factor_spatial"):
            stated = cfg.get(name)
            if stated is not None and stated != getattr(out, name):
                raise CheckpointError(f"{where}: {name} {stated} does not fit the architecture, which gives "
                                      f"{getattr(out, name)} (from temperal_downsample / dim_mult)")
        return out


def diffusers_sizes(cfg: Mapping[str, Any]) -> dict:
    """The WanVAEConfig sizes a diffusers Wan2.1-style VAE config states (AutoencoderKLWan and
    AutoencoderKLQwenImage: the same fields), diffusers' defaults where omitted; `dropout` (training
    only) checked to be a number. Raises TypeError / ValueError on a malformed value."""
    float(cfg.get("dropout", 0.0))
    return dict(
        dim=int(cfg.get("base_dim", 96)),
        z_dim=int(cfg.get("z_dim", 16)),
        dim_mult=tuple(int(m) for m in cfg.get("dim_mult", (1, 2, 4, 4))),
        num_res_blocks=int(cfg.get("num_res_blocks", 2)),
        temperal_downsample=tuple(bool(t) for t in cfg.get("temperal_downsample", (False, True, True))),
        latents_mean=tuple(float(v) for v in cfg.get("latents_mean", WAN21_LATENTS_MEAN)),
        latents_std=tuple(float(v) for v in cfg.get("latents_std", WAN21_LATENTS_STD)),
    )


def latent_stats(
    latents_mean: tuple[float, ...], latents_std: tuple[float, ...], like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1/std) as [1, z, 1, 1, 1] float32 tensors on the device of `like` (both VAE versions)."""
    shape = (1, len(latents_mean), 1, 1, 1)
    mean = torch.tensor(latents_mean, dtype=torch.float32, device=like.device).view(shape)
    std = torch.tensor(latents_std, dtype=torch.float32, device=like.device).view(shape)
    return mean, 1.0 / std


def tiny_vae_config() -> WanVAEConfig:
    """A small VAE of the same structure (4x8x8, 16 latent channels) for demos and tests."""
    return WanVAEConfig(dim=8, dim_mult=(1, 2, 2, 2))


class WanVAE(VAEDecode, nn.Module):
    """Official `WanVAE_`: `encoder`, `conv1` (posterior 1x1x1), `conv2` (post-quant 1x1x1), `decoder`.

    `decode`, `decode_chunks`, `set_memory_format`, `set_tiling`, `_repeated_blocks`:
    lightx2v.models.wan.vae_decode."""

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = Encoder3d(
            c.dim, c.z_dim * 2, c.dim_mult, c.num_res_blocks, c.attn_scales, c.temperal_downsample
        )
        self.conv1 = CausalConv3d(c.z_dim * 2, c.z_dim * 2, 1)
        self.conv2 = CausalConv3d(c.z_dim, c.z_dim, 1)
        self.decoder = Decoder3d(
            c.decoder_dim or c.dim, c.z_dim, c.dim_mult, c.num_res_blocks, c.attn_scales,
            tuple(reversed(c.temperal_downsample)),
        )

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return latent_stats(self.config.latents_mean, self.config.latents_std, like)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> normalized latents [B, z, 1 + (T-1)//4, H/8, W/8], float32.

        The latent is the posterior mean `mu` (no sampling), normalized as `(mu - mean) / std`
        with the config's per-channel constants, as the official `WanVAE.encode` returns it.
        Frames past the last full chunk of 4 are ignored, as in the reference (pass T = 4k + 1).
        """
        if video.ndim != 5 or video.shape[1] != 3:
            raise InputError(f"VAE encode expects a video [B, 3, T, H, W], got shape {tuple(video.shape)}")
        cache = cache if cache is not None else CausalCache()
        x = video.to(self.conv1.weight.dtype)
        mu = self._encode_tiled(x, cache)  # set_tiling (VAEDecode); None: untiled
        mu = self._encode_frames(x, cache) if mu is None else mu
        mean, inv_std = self._stats(mu)
        # (mu - mean) * (1/std): the reference's exact formula (official scale[1] and diffusers' pipelines)
        return (mu.float() - mean) * inv_std

    def _encode_frames(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Video [B, 3, T, H, W] -> posterior mean [B, z, T', H/8, W/8] (the time loop, cache reset)."""
        cache.reset()
        n_chunks = 1 + (x.shape[2] - 1) // self.config.scale_factor_temporal
        outs = []
        for i in range(n_chunks):
            # chunk 0 is frame 0 alone; chunk i > 0 is frames 1 + 4(i-1) .. 4i
            start = 0 if i == 0 else 1 + self.config.scale_factor_temporal * (i - 1)
            stop = 1 + self.config.scale_factor_temporal * i
            cache.start_chunk()
            outs.append(self.encoder(x[:, :, start:stop], cache))
        cache.reset()
        return self.conv1(torch.cat(outs, dim=2))[:, : self.config.z_dim]  # [:z] mean, [z:] log-variance

    def _decode_one(self, chunk: torch.Tensor, cache: CausalCache, i: int) -> torch.Tensor:
        return self.decoder(chunk, cache)

    def _to_pixels(self, y: torch.Tensor) -> torch.Tensor:
        # decode: video [B, 3, 1 + 4(T'-1), 8h, 8w] in [-1, 1], float32 (VAEDecode.decode / decode_chunks)
        return y.float().clamp_(-1.0, 1.0)


# ---- diffusers AutoencoderKLWan -> official keys ------------------------------------------------

# Inside a residual block: diffusers name -> index in the official `residual` Sequential.
RESNET_PARTS = {
    "norm1.gamma": "residual.0.gamma",
    "conv1.weight": "residual.2.weight",
    "conv1.bias": "residual.2.bias",
    "norm2.gamma": "residual.3.gamma",
    "conv2.weight": "residual.6.weight",
    "conv2.bias": "residual.6.bias",
    "conv_shortcut.weight": "shortcut.weight",
    "conv_shortcut.bias": "shortcut.bias",
}

_PLAIN = (
    (re.compile(r"^quant_conv\.(weight|bias)$"), r"conv1.\1"),
    (re.compile(r"^post_quant_conv\.(weight|bias)$"), r"conv2.\1"),
    (re.compile(r"^(encoder|decoder)\.conv_in\.(weight|bias)$"), r"\1.conv1.\2"),
    (re.compile(r"^(encoder|decoder)\.norm_out\.gamma$"), r"\1.head.0.gamma"),
    (re.compile(r"^(encoder|decoder)\.conv_out\.(weight|bias)$"), r"\1.head.2.\2"),
)
_MID = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")
_DOWN = re.compile(r"^encoder\.down_blocks\.(\d+)\.(.+)$")
_UP_RESNET = re.compile(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$")
_UP_SAMPLER = re.compile(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$")


def common_key_from_diffusers(key: str) -> str | None:
    """Official key of a diffusers key that both VAE versions name alike (quant convs, conv_in,
    the middle, the head); None for the others (the stages, whose layout differs)."""
    for pattern, repl in _PLAIN:
        if pattern.match(key):
            return pattern.sub(repl, key)
    if m := _MID.match(key):
        side, kind, n, rest = m.groups()
        # official middle = (resnet 0, attention 0, resnet 1)
        idx = 2 * int(n) if kind == "resnets" else 2 * int(n) + 1
        rest = RESNET_PARTS.get(rest, rest) if kind == "resnets" else rest
        return f"{side}.middle.{idx}.{rest}"
    return None


def vae_key_from_diffusers(key: str, num_res_blocks: int = 2) -> str | None:
    """Official `Wan2.1_VAE.pth` key of a diffusers `AutoencoderKLWan` key.

    The encoder's `down_blocks` is the same flat list as the official `downsamples`; the
    decoder's `up_blocks[i]` (num_res_blocks + 1 resnets, then an upsampler) is flattened into
    `upsamples` with num_res_blocks + 2 entries per stage, so pass the checkpoint's num_res_blocks
    (`WanVAEConfig.key_from_diffusers` does). Valid for `attn_scales = ()` (diffusers has no
    attention in its decoder stages). Unknown keys are returned unchanged so that loading reports them.
    """
    if (common := common_key_from_diffusers(key)) is not None:
        return common
    if m := _DOWN.match(key):
        # resnets get renamed parts; resample/time_conv/attention keys are identical
        return f"encoder.downsamples.{m.group(1)}.{RESNET_PARTS.get(m.group(2), m.group(2))}"
    per_stage = num_res_blocks + 2
    if m := _UP_RESNET.match(key):
        stage, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        return f"decoder.upsamples.{stage * per_stage + j}.{RESNET_PARTS.get(rest, rest)}"
    if m := _UP_SAMPLER.match(key):
        stage, rest = int(m.group(1)), m.group(2)
        return f"decoder.upsamples.{stage * per_stage + num_res_blocks + 1}.{rest}"
    return key
