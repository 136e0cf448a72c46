"""The blocks of the HunyuanVideo-1.5 VAE: causal 3D convs, RMS norms, residual blocks, the frame-causal
mid-block attention, and the resamplers that fold space (and time) into channels.

Design: each class has the official module and parameter names (tencent/HunyuanVideo-1.5,
hyvideo/models/autoencoders/hunyuanvideo_15_vae.py: `CausalConv3d.conv`, `RMS_norm.gamma`,
`ResnetBlock.nin_shortcut`, `AttnBlock.q/k/v/proj_out`, `Downsample.conv`, `Upsample.conv`), so the
released `vae/diffusion_pytorch_model.safetensors` loads without renaming. The whole clip goes through
each block at once, as in the reference: causality comes from the convs' padding (two copies of the
first frame in front, nothing behind; the spatial sides replicate-padded too) and from the attention
mask (a token sees its own frame and the frames before it). Time is resampled causally: the first
frame alone, then pairs of frames, at each of the two temporal stages, so the encoder maps frame 0
alone and then groups of 4 frames to one latent frame each, and the decoder the inverse.

The resamplers are parameter-light: a 3x3x3 conv to 1/factor (down) or factor x (up) of the channels,
a pixel (un)shuffle of 2x2 (x2 in time) blocks, plus a parameter-free shortcut that averages
(down) or repeats (up) channel groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttnBlock", "CausalConv3d", "Downsample", "RMSNorm", "ResnetBlock", "Upsample"]


class CausalConv3d(nn.Module):
    """A 3D conv whose output frame t sees input frames t-k+1 .. t (replicate padding in front of the
    first frame and on the spatial sides, as the reference pads)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3) -> None:
        super().__init__()
        p = kernel // 2
        self.pad = (p, p, p, p, kernel - 1, 0)  # W left/right, H top/bottom, T front/back
        self.conv = nn.Conv3d(c_in, c_out, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T, H, W] -> [B, C_out, T, H, W]
        return self.conv(F.pad(x, self.pad, mode="replicate"))


class RMSNorm(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma (the reference's RMS_norm, channel-first, no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # half precision normalises in float32 (the norm of 1024 channels overflows fp16 easily)
        y = F.normalize(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=1).to(x.dtype)
        return y * self.scale * self.gamma


class ResnetBlock(nn.Module):
    """norm -> SiLU -> conv, twice, plus the input (through a 1x1x1 `nin_shortcut` if the width changes)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(c_in)
        self.conv1 = CausalConv3d(c_in, c_out)
        self.norm2 = RMSNorm(c_out)
        self.conv2 = CausalConv3d(c_out, c_out)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv3d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


def frame_causal_mask(frames: int, per_frame: int, device: torch.device) -> torch.Tensor:
    """[L, L] bool, L = frames * per_frame: True where query token i may see key token j, i.e. j's frame
    is not after i's (the reference's additive -inf mask, as a boolean one)."""
    frame = torch.arange(frames, device=device).repeat_interleave(per_frame)
    return frame[None, :] <= frame[:, None]


class AttnBlock(nn.Module):
    """Single-head self-attention over every (frame, row, column) token, frame-causal, 1x1x1 projections."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.q = nn.Conv3d(dim, dim, 1)
        self.k = nn.Conv3d(dim, dim, 1)
        self.v = nn.Conv3d(dim, dim, 1)
        self.proj_out = nn.Conv3d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T, H, W]; tokens in (T, H, W) order, one head of width C
        b, c, t, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))  # [B, 1, L, C]
        mask = frame_causal_mask(t, h * w, x.device) if t > 1 else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, 1, L, C]
        y = y.squeeze(1).transpose(1, 2).reshape(b, c, t, h, w)
        return x + self.proj_out(y)


def fold(x: torch.Tensor, rt: int) -> torch.Tensor:
    """Space(-time) to channels: [B, C, T*rt, 2H, 2W] -> [B, rt*2*2*C, T, H, W], the channel index
    ordered (rt, r_h, r_w, c) as the reference's rearrange."""
    b, c, t, h, w = x.shape
    x = x.view(b, c, t // rt, rt, h // 2, 2, w // 2, 2).permute(0, 3, 5, 7, 1, 2, 4, 6)
    return x.reshape(b, rt * 4 * c, t // rt, h // 2, w // 2)


def unfold(x: torch.Tensor, rt: int) -> torch.Tensor:
    """Channels to space(-time), the inverse of `fold`: [B, rt*2*2*C, T, H, W] -> [B, C, T*rt, 2H, 2W]."""
    b, packed, t, h, w = x.shape
    c = packed // (rt * 4)
    x = x.view(b, rt, 2, 2, c, t, h, w).permute(0, 4, 5, 1, 6, 2, 7, 3)
    return x.reshape(b, c, t * rt, h * 2, w * 2)


def _group_mean(x: torch.Tensor, channels: int) -> torch.Tensor:
    # [B, channels * g, T, H, W] -> [B, channels, T, H, W]: the mean of each run of g channels
    b, c, t, h, w = x.shape
    return x.view(b, channels, c // channels, t, h, w).mean(dim=2)  # (no -1: T may be 0)


class Downsample(nn.Module):
    """Halve H and W (and T, causally, if `temporal`): conv to c_out / factor channels, fold 2x2(x2)
    blocks into channels, plus the folded input averaged to c_out channels. With `temporal`, frame 0 is
    folded alone (2x2 only; its conv half duplicated, its shortcut averaged over half the group)."""

    def __init__(self, c_in: int, c_out: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        factor = 8 if temporal else 4
        self.conv = CausalConv3d(c_in, c_out // factor)
        self.c_out = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, T, H, W] -> [B, C_out, T', H/2, W/2]; T' = 1 + (T - 1) / 2 if temporal else T
        h = self.conv(x)
        if not self.temporal:
            return fold(h, 1) + _group_mean(fold(x, 1), self.c_out)
        first = fold(h[:, :, :1], 1)
        h = torch.cat([torch.cat([first, first], dim=1), fold(h[:, :, 1:], 2)], dim=2)
        shortcut = torch.cat([_group_mean(fold(x[:, :, :1], 1), self.c_out),
                              _group_mean(fold(x[:, :, 1:], 2), self.c_out)], dim=2)
        return h + shortcut


class Upsample(nn.Module):
    """Double H and W (and T, causally, if `temporal`): conv to c_out * factor channels, unfold them into
    2x2(x2) blocks, plus the input's channels repeated and unfolded the same way. With `temporal`, frame
    0 unfolds to one frame (2x2 only; the first half of its channels, the shortcut repeated half as often)."""

    def __init__(self, c_in: int, c_out: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        factor = 8 if temporal else 4
        self.conv = CausalConv3d(c_in, c_out * factor)
        self.repeats = factor * c_out // c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, T, H, W] -> [B, C_out, T', 2H, 2W]; T' = 1 + 2(T - 1) if temporal else T
        h = self.conv(x)
        if not self.temporal:
            return unfold(h, 1) + unfold(x.repeat_interleave(self.repeats, dim=1), 1)
        first = unfold(h[:, :, :1], 1)
        h = torch.cat([first[:, : first.shape[1] // 2], unfold(h[:, :, 1:], 2)], dim=2)
        shortcut = torch.cat([unfold(x[:, :, :1], 1).repeat_interleave(self.repeats // 2, dim=1),
                              unfold(x[:, :, 1:], 2).repeat_interleave(self.repeats, dim=1)], dim=2)
        return h + shortcut
