"""Building blocks of the Wan2.2 VAE (the 48-channel VAE of Wan2.2-TI2V-5B), with the official names.

Design: the Wan2.2 VAE is the Wan2.1 causal VAE with three changes, and reuses its pieces
(`CausalConv3d`, `CausalCache`, `ResidualBlock`, `AttentionBlock`, `Resample`, the middle and head):

* the video is patchified first: each 2x2 pixel patch becomes 12 channels (`patchify`), so the
  encoder's first conv takes 12 channels and the decoder's head gives 12;
* each encoder stage is a `Down_ResidualBlock`: its residual blocks and resample, plus a
  parameter-free shortcut that folds space(-time) into channels and averages channel groups
  (`AvgDown3D`); each decoder stage is an `Up_ResidualBlock` whose shortcut repeats channels and
  unfolds them into space(-time) (`DupUp3D`);
* the decoder's upsampling convs keep the channel count (Wan2.1 halves it).

Module layouts follow `wan/modules/vae2_2.py` of Wan-Video/Wan2.2, so `state_dict` keys equal those
of `Wan2.2_VAE.pth`: `encoder.downsamples.{stage}.downsamples.{j}.residual.2.weight`,
`encoder.downsamples.{stage}.downsamples.{num_res_blocks}.resample.1.weight` (and `.time_conv.`),
`decoder.upsamples.{stage}.upsamples.{num_res_blocks + 1}.resample.1.weight`. The shortcuts hold
no parameters, so they add no keys.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightx2v.models.wan.vae_blocks import (
    CausalCache,
    CausalConv3d,
    Resample,
    ResidualBlock,
    head_blocks,
    middle_blocks,
    run_cached,
)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C*p*p, T, H/p, W/p]; channel c*p*p + dw*p + dh holds pixel (dh, dw)
    of each p x p patch (the column offset varies slower than the row offset, as in the reference)."""
    if p == 1:
        return x
    b, c, t, h, w = x.shape
    x = x.view(b, c, t, h // p, p, w // p, p)  # [B, C, T, H', dh, W', dw]
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of `patchify`: [B, C*p*p, T, h, w] -> [B, C, T, h*p, w*p]."""
    if p == 1:
        return x
    b, cpp, t, h, w = x.shape
    x = x.view(b, cpp // (p * p), p, p, t, h, w)  # [B, C, dw, dh, T, h, w]
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), t, h * p, w * p)


def _fold(x: torch.Tensor, ft: int, fs: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C*ft*fs*fs, T/ft, H/fs, W/fs]; channel ((c*ft + dt)*fs + dh)*fs + dw."""
    b, c, t, h, w = x.shape
    x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs)  # [B, C, T', dt, H', dh, W', dw]
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * ft * fs * fs, t // ft, h // fs, w // fs)


def _unfold(x: torch.Tensor, ft: int, fs: int) -> torch.Tensor:
    """Inverse of `_fold`: [B, C*ft*fs*fs, T, H, W] -> [B, C, T*ft, H*fs, W*fs]."""
    b, cf, t, h, w = x.shape
    c = cf // (ft * fs * fs)
    x = x.view(b, c, ft, fs, fs, t, h, w)  # [B, C, dt, dh, dw, T, H, W]
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, c, t * ft, h * fs, w * fs)


class AvgDown3D(nn.Module):
    """Parameter-free downsampling shortcut: fold (ft, fs, fs) blocks into channels, then average
    consecutive groups of channels down to `out_dim`. Time is zero-padded at the front to a multiple
    of ft (a 1-frame first chunk becomes [zeros, frame] and so is halved)."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        self.group = in_dim * factor_t * factor_s * factor_s // out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, T, H, W] -> [B, C_out, ceil(T/ft), H/fs, W/fs]
        pad_t = -x.shape[2] % self.factor_t
        if pad_t:
            x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
        y = _fold(x, self.factor_t, self.factor_s)
        b, _, t, h, w = y.shape
        return y.view(b, self.out_dim, self.group, t, h, w).mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free upsampling shortcut: repeat each channel, then unfold channels into (ft, fs, fs)
    blocks. On the first chunk the first ft - 1 frames are dropped (1 latent frame -> 1 frame)."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.factor_t, self.factor_s = factor_t, factor_s
        self.repeats = out_dim * factor_t * factor_s * factor_s // in_dim

    def forward(self, x: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        # x: [B, C_in, T, H, W] -> [B, C_out, T*ft (- ft+1 on the first chunk), H*fs, W*fs]
        y = _unfold(x.repeat_interleave(self.repeats, dim=1), self.factor_t, self.factor_s)
        return y[:, :, self.factor_t - 1 :] if first_chunk else y


class Down_ResidualBlock(nn.Module):  # noqa: N801 - the official class name
    """An encoder stage: `downsamples` (residual blocks, then a Resample unless last) + `avg_shortcut`."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, down: bool) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if down else 1)
        blocks: list[nn.Module] = [ResidualBlock(in_dim if j == 0 else out_dim, out_dim) for j in range(num_res_blocks)]
        if down:
            blocks.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return run_cached(self.downsamples, x, cache) + self.avg_shortcut(x)


class Up_ResidualBlock(nn.Module):  # noqa: N801 - the official class name
    """A decoder stage: `upsamples` (num_res_blocks + 1 residual blocks, then a Resample unless last)
    + `avg_shortcut` (None on the last stage, which does not upsample)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, up: bool) -> None:
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if up else None
        blocks: list[nn.Module] = [
            ResidualBlock(in_dim if j == 0 else out_dim, out_dim) for j in range(num_res_blocks + 1)
        ]
        if up:
            blocks.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", up_dim=out_dim))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: CausalCache, first_chunk: bool) -> torch.Tensor:
        y = run_cached(self.upsamples, x, cache)
        return y if self.avg_shortcut is None else y + self.avg_shortcut(x, first_chunk)


class Encoder3d(nn.Module):
    """Patchified video [B, in_dim, T, H, W] -> [B, z_dim, T', H/2^k, W/2^k] (z_dim: 2x the latent channels)."""

    def __init__(
        self, in_dim: int, dim: int, z_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
        temperal_downsample: Sequence[bool],
    ) -> None:
        super().__init__()
        dims = [dim * u for u in (1, *dim_mult)]
        last = len(dim_mult) - 1
        self.conv1 = CausalConv3d(in_dim, dims[0], 3, padding=1)
        self.downsamples = nn.Sequential(*(
            Down_ResidualBlock(dims[i], dims[i + 1], num_res_blocks, i < last and temperal_downsample[i], i < last)
            for i in range(len(dim_mult))
        ))
        self.middle = middle_blocks(dims[-1])
        self.head = head_blocks(dims[-1], z_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for stage in self.downsamples:
            x = stage(x, cache)
        x = run_cached(self.middle, x, cache)
        return run_cached(self.head, x, cache)


class Decoder3d(nn.Module):
    """Latents [B, z_dim, T', h, w] -> patchified video [B, out_dim, T, h*2^k, w*2^k], one latent frame per chunk."""

    @property
    def _repeated_blocks(self) -> tuple[str, ...]:
        """The middle and each stage's blocks (a stage itself takes the cache and a flag: not a pure region)."""
        return ("middle", *(f"upsamples.{i}.upsamples" for i in range(len(self.upsamples))))

    def __init__(
        self, dim: int, z_dim: int, out_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
        temperal_upsample: Sequence[bool],
    ) -> None:
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1], *reversed(dim_mult))]
        last = len(dim_mult) - 1
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = middle_blocks(dims[0])
        self.upsamples = nn.Sequential(*(
            Up_ResidualBlock(dims[i], dims[i + 1], num_res_blocks, i < last and temperal_upsample[i], i < last)
            for i in range(len(dim_mult))
        ))
        self.head = head_blocks(dims[-1], out_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache, first_chunk: bool) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = run_cached(self.middle, x, cache)
        for stage in self.upsamples:
            x = stage(x, cache, first_chunk)
        return run_cached(self.head, x, cache)
