"""The Qwen-Image-2.1 VAE: an image autoencoder of the Wan2.2-VAE kind (residual stages with
average / duplicate shortcuts), 16x spatial, 64 latent channels, RGBA in and out.

Design: diffusers' `AutoencoderKLQwenImage21` (vae/ of the release) is the Wan2.2 VAE's structure
with every "causal 3-D" convolution a 2-D one: an image is one frame, and a one-frame Wan-style
decode never reads a temporal cache. So this module is written for images: [B, C, H, W] tensors,
plain `nn.Conv2d`s, no causal cache. Parameter names and shapes are diffusers' (`encoder.conv_in`,
`encoder.down_blocks.{i}.resnets.{j}.norm1.gamma` of shape [C, 1, 1, 1], `decoder.up_blocks.{i}.upsampler.resample.1`,
`quant_conv`, `post_quant_conv` ...), so vae/ loads by name. The stages' `time_conv`s, which a
one-frame pass never runs, are built (their keys exist) and not run.

What a one-frame pass does that the 2-D form must keep: a stage that halves time in the encoder
pads the frame axis to 2 with a zero frame *before* the image, and its average shortcut then
averages channel groups that include that zero frame; the decoder's duplicate shortcut of such a
stage makes 2 frames and keeps the last. `_avg_down` and `_dup_up` do exactly that.

Latent normalization ((mu - mean) / std before the DiT, z * std + mean before decode) is the
pipeline's, as in diffusers, with the file's `latents_mean` / `latents_std` (`VAE21Config`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightx2v.errors import CheckpointError, InputError

__all__ = ["QwenImage21VAE", "VAE21Config"]

CLASS_NAME = "AutoencoderKLQwenImage21"


@dataclass(frozen=True)
class VAE21Config:
    """diffusers' AutoencoderKLQwenImage21 config; omitted fields take diffusers' defaults."""

    base_dim: int = 96
    decoder_base_dim: Optional[int] = 144
    z_dim: int = 64
    dim_mult: tuple[int, ...] = (1, 2, 4, 8, 8)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True, True)
    in_channels: int = 4
    out_channels: int = 4
    latents_mean: Optional[tuple[float, ...]] = None
    latents_std: Optional[tuple[float, ...]] = None
    scale_factor_spatial: int = 16

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any], where: str = "vae/config.json") -> "VAE21Config":
        """Every field honoured or refused by name; `latents_mean` / `latents_std` are required (the
        pipeline normalizes with them; diffusers' long default lists are in every released config)."""
        if cfg.get("_class_name", CLASS_NAME) != CLASS_NAME:
            raise CheckpointError(f"{where} is a {cfg.get('_class_name')}, expected an {CLASS_NAME}")
        fields = {f.name for f in dataclasses.fields(cls)}
        ignored_if = {"dropout": 0.0, "attn_scales": [], "is_residual": True, "patch_size": None,
                      "scale_factor_temporal": None}
        kw = {}
        for key, value in cfg.items():
            if key.startswith("_"):
                continue
            if key in ignored_if:
                # dropout does nothing at inference; the others must be the released values
                if key not in ("dropout", "scale_factor_temporal") and value != ignored_if[key]:
                    raise CheckpointError(f"{where}: {key} = {value!r} is not supported; expected {ignored_if[key]!r}")
            elif key in fields:
                kw[key] = tuple(value) if isinstance(value, list) else value
            else:
                raise CheckpointError(f"{where}: unknown field {key!r} for an {CLASS_NAME}")
        out = cls(**kw)
        for name in ("latents_mean", "latents_std"):
            v = getattr(out, name)
            if v is None or len(v) != out.z_dim:
                raise CheckpointError(f"{where}: {name} must list z_dim = {out.z_dim} numbers")
        if 2 ** len(out.temperal_downsample) != out.scale_factor_spatial or len(out.dim_mult) != len(out.temperal_downsample) + 1:
            raise CheckpointError(f"{where}: {len(out.dim_mult)} stages (dim_mult) with {len(out.temperal_downsample)} "
                                  f"downsamples do not make the {out.scale_factor_spatial}x scale_factor_spatial")
        return out


# ---------------------------------------------------------------- layers


class RMSNorm2d(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma; gamma stored [C, 1, 1, 1] (image=False) or [C, 1, 1]."""

    def __init__(self, dim: int, image: bool = False) -> None:
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if image else (dim, 1, 1, 1)))

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C, H, W]
        return F.normalize(x.float(), dim=1).to(x.dtype) * self.scale * self.gamma.view(-1, 1, 1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = RMSNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)))
        return self.conv2(F.silu(self.norm2(x))) + h


class AttnBlock(nn.Module):
    """One-head self-attention over the pixels (1x1 convs to_qkv and proj)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm2d(dim, image=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b, 1, c * 3, h * w).permute(0, 1, 3, 2)
        q, k, v = qkv.chunk(3, dim=-1)  # [B, 1, HW, C] each
        o = F.scaled_dot_product_attention(q, k, v).squeeze(1).permute(0, 2, 1).reshape(b, c, h, w)
        return self.proj(o) + x


class MidBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(dim, dim), ResBlock(dim, dim)])
        self.attentions = nn.ModuleList([AttnBlock(dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Resample(nn.Module):
    """x2 spatial down (zero-pad right/bottom, 3x3 stride 2) or up (nearest-exact, 3x3); a stage that
    also resamples time has a `time_conv` (1x1), which one frame never runs."""

    def __init__(self, dim: int, mode: str, out_dim: Optional[int] = None) -> None:
        super().__init__()
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, out_dim, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = nn.Conv2d(dim, dim * 2, 1)
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode.startswith("up"):
            x = F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)
        return self.resample(x)


def _avg_down(x: Tensor, cout: int, ft: int, fs: int) -> Tensor:
    """The average shortcut of a downsampling stage for one frame: [B, C, H, W] -> [B, cout, H/fs, W/fs].
    With ft = 2 the frame axis is [zero frame, image] before the channel groups are averaged."""
    b, c, h, w = x.shape
    x = x[:, :, None]
    if ft == 2:
        x = torch.cat([torch.zeros_like(x), x], dim=2)
    x = x.view(b, c, 1, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
    x = x.reshape(b, cout, c * ft * fs * fs // cout, h // fs, w // fs)
    return x.mean(dim=2)


def _dup_up(x: Tensor, cout: int, ft: int, fs: int) -> Tensor:
    """The duplicate shortcut of an upsampling stage for one frame (the last of ft frames):
    [B, C, H, W] -> [B, cout, H*fs, W*fs]."""
    b, c, h, w = x.shape
    x = x.repeat_interleave(cout * ft * fs * fs // c, dim=1)
    x = x.view(b, cout, ft, fs, fs, h, w).permute(0, 1, 2, 5, 3, 6, 4)  # [B, cout, ft, H, fs, W, fs]
    return x.reshape(b, cout, ft, h * fs, w * fs)[:, :, ft - 1]


class DownStage(nn.Module):
    """Residual blocks (+ a downsample), plus the average shortcut of the stage's input."""

    def __init__(self, cin: int, cout: int, n: int, temporal: bool, down: bool) -> None:
        super().__init__()
        self.cout, self.ft, self.fs = cout, 2 if temporal else 1, 2 if down else 1
        self.resnets = nn.ModuleList(ResBlock(cin if i == 0 else cout, cout) for i in range(n))
        self.downsampler = Resample(cout, "downsample3d" if temporal else "downsample2d") if down else None

    def forward(self, x: Tensor) -> Tensor:
        short = _avg_down(x, self.cout, self.ft, self.fs)
        for r in self.resnets:
            x = r(x)
        if self.downsampler is not None:
            x = self.downsampler(x)
        return x + short


class UpStage(nn.Module):
    """n + 1 residual blocks (+ an upsample), plus the duplicate shortcut of the stage's input."""

    def __init__(self, cin: int, cout: int, n: int, temporal: bool, up: bool) -> None:
        super().__init__()
        self.cout, self.ft = cout, 2 if temporal else 1
        self.up = up
        self.resnets = nn.ModuleList(ResBlock(cin if i == 0 else cout, cout) for i in range(n + 1))
        self.upsampler = Resample(cout, "upsample3d" if temporal else "upsample2d", cout) if up else None

    def forward(self, x: Tensor) -> Tensor:
        short = _dup_up(x, self.cout, self.ft, 2) if self.up else None
        for r in self.resnets:
            x = r(x)
        if self.upsampler is not None:
            x = self.upsampler(x)
        return x if short is None else x + short


class Encoder(nn.Module):
    def __init__(self, c: VAE21Config) -> None:
        super().__init__()
        dims = [c.base_dim * m for m in (1, *c.dim_mult)]
        last = len(c.dim_mult) - 1
        self.conv_in = nn.Conv2d(c.in_channels, dims[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownStage(dims[i], dims[i + 1], c.num_res_blocks, c.temperal_downsample[i] if i != last else False, i != last)
            for i in range(len(c.dim_mult)))
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm2d(dims[-1])
        self.conv_out = nn.Conv2d(dims[-1], c.z_dim * 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for stage in self.down_blocks:
            x = stage(x)
        return self.conv_out(F.silu(self.norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, c: VAE21Config) -> None:
        super().__init__()
        base = c.decoder_base_dim or c.base_dim
        dims = [base * m for m in (c.dim_mult[-1], *c.dim_mult[::-1])]
        up_t = c.temperal_downsample[::-1]
        last = len(c.dim_mult) - 1
        self.conv_in = nn.Conv2d(c.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = nn.ModuleList(
            UpStage(dims[i], dims[i + 1], c.num_res_blocks, up_t[i] if i != last else False, i != last)
            for i in range(len(c.dim_mult)))
        self.norm_out = RMSNorm2d(dims[-1])
        self.conv_out = nn.Conv2d(dims[-1], c.out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(x))
        for stage in self.up_blocks:
            x = stage(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class QwenImage21VAE(nn.Module):
    """encode(images [B, in_channels, 1, H, W] in [-1, 1]) -> normalized latents [B, z, 1, H/16, W/16];
    decode(normalized latents) -> images [B, out_channels, 1, H, W] clamped to [-1, 1]. The latents the
    DiT sees are normalized; the posterior mean is the encoding (diffusers' sample_mode "argmax")."""

    def __init__(self, config: VAE21Config) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(c)
        self.quant_conv = nn.Conv2d(c.z_dim * 2, c.z_dim * 2, 1)
        self.post_quant_conv = nn.Conv2d(c.z_dim, c.z_dim, 1)
        self.decoder = Decoder(c)

    @staticmethod
    def key_from_diffusers(key: str) -> str:
        return key

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.config.latents_mean, dtype=torch.float32, device=like.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.config.latents_std, dtype=torch.float32, device=like.device).view(1, -1, 1, 1, 1)
        return mean, std

    def _frame(self, x: Tensor, channels: int, what: str) -> Tensor:
        if x.ndim != 5 or x.shape[1] != channels or x.shape[2] != 1:
            raise InputError(f"VAE {what} expects [B, {channels}, 1, H, W], got shape {tuple(x.shape)}")
        return x[:, :, 0]

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        x = self._frame(images, self.config.in_channels, "encode")
        mu = self.quant_conv(self.encoder(x.to(self.quant_conv.weight.dtype)))[:, : self.config.z_dim]
        mean, std = self._stats(mu)
        return (mu[:, :, None].float() - mean) / std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        z = self._frame(latents, self.config.z_dim, "decode")
        mean, std = self._stats(z)
        z = (z[:, :, None].float() * std + mean)[:, :, 0].to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(z)).clamp(-1.0, 1.0)[:, :, None].float()
