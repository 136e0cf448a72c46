"""Building blocks of the Wan2.1 3D causal VAE, with the official parameter names.

Design: a video is processed in chunks along time (the encoder takes 1 frame, then 4 at a
time; the decoder one latent frame at a time). Every causal convolution over time looks back
at the last frames of the previous chunk, which a `CausalCache` carries from one chunk to the
next: one slot per call site, handed out in call order (the order is the same in every chunk,
so slot `i` always belongs to the same convolution). The cache is an explicit argument of each
`forward`; no module keeps state between calls.

Module layouts (`nn.Sequential` indices) follow `wan/modules/vae.py` of Wan-Video/Wan2.1 so that
the `state_dict` keys equal those of `Wan2.1_VAE.pth` (e.g. `residual.0.gamma`, `residual.2.weight`,
`resample.1.weight`, `time_conv.weight`, `middle.1.to_qkv.weight`, `head.2.weight`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Frames of history a temporal kernel of size 3 needs.
CACHE_T = 2


class CausalCache:
    """The last frames seen by each causal convolution, carried from one time chunk to the next.

    `frames[i]` is the history of the i-th call site: `None` before its first chunk, else a
    tensor [B, C, t<=2, H, W] of the frames that precede the next chunk. A tensor with t=0 means
    "the first chunk has passed but left no history" (the decoder's temporal upsampler, whose
    first chunk skips its time convolution; the official code marks this with the string 'Rep').

    The blocks themselves are pure functions of tensors (`ResidualBlock(x, prev1, prev2) -> (y,
    hist1, hist2)`): `run_cached` reads their slots before the call and stores what they return,
    so no slot index reaches a block's forward and a compiled block is not specialised per slot.
    """

    def __init__(self) -> None:
        self.frames: list[torch.Tensor | None] = []
        self.index = 0

    def reset(self) -> None:
        """Forget all history (start of a new video); frees the cached tensors."""
        self.frames = []
        self.index = 0

    def start_chunk(self) -> None:
        """Rewind the slot counter: the next chunk calls the convolutions in the same order."""
        self.index = 0

    def next_slot(self) -> int:
        """The slot of the next call site in this chunk (grown on first use)."""
        i = self.index
        self.index += 1
        if i == len(self.frames):
            self.frames.append(None)
        return i

    def take(self, n: int) -> list[int]:
        """The next `n` slots of this chunk."""
        return [self.next_slot() for _ in range(n)]


def history_after(x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """The (up to) CACHE_T frames that precede the chunk after `x`, given `prev` before `x`.

    A copy only where one is needed: x's last 2 frames are copied out of a longer chunk (so the
    chunk can be freed); a chunk of 2 frames is kept as it is (no block writes into its input); a
    1-frame chunk after history is joined to prev's last frame, and the first 1-frame chunk to a
    zero frame (the causal padding it replaces: every history after the first chunk then has 2
    frames, one shape for a compiled block to see)."""
    # x: [B, C, T, H, W]
    t = x.shape[2]
    if t < CACHE_T and prev is not None and prev.shape[2] > 0:
        return torch.cat([prev[:, :, -1:].to(x.device), x], dim=2)
    if t < CACHE_T and prev is None:
        return F.pad(x, (0, 0, 0, 0, CACHE_T - t, 0))
    if t > CACHE_T:
        return x[:, :, -CACHE_T:].clone()
    return x


class CausalConv3d(nn.Conv3d):
    """Conv3d that pads time on the left only (by 2*padding_t), so frame t sees frames <= t.

    With a `cache`, the frames of the previous chunk replace (part of) the zero padding. The
    spatial zero padding is the convolution's own (no padded copy of the input is made); only
    time is joined to the history (one copy) or zero-padded (the first chunk).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        pt, ph, pw = self.padding
        self._time_pad = 2 * pt
        self.padding = (0, ph, pw)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        # x: [B, C, T, H, W]
        if cache is None:
            return self.conv_after(x, None)
        slot = cache.next_slot()
        y, cache.frames[slot] = self.step(x, cache.frames[slot])
        return y

    def step(self, x: torch.Tensor, prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(conv of `x` after the history `prev`, the history for the next chunk): tensors only."""
        return self.conv_after(x, prev), history_after(x, prev)

    def conv_after(self, x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """Convolve `x` given the frames `prev` [B, C, t, H, W] that precede it (None: zeros)."""
        pad = self._time_pad
        if prev is not None and pad > 0 and prev.shape[2] > 0:
            x = torch.cat([prev.to(x.device), x], dim=2)
            pad -= prev.shape[2]
        if pad > 0:
            x = F.pad(x, (0, 0, 0, 0, pad, 0))
        return super().forward(x)


class RMS_norm(nn.Module):  # noqa: N801 - the official class name
    """x / ||x||_channels * sqrt(C) * gamma (an RMS norm over the channel dimension 1).

    `images=True` is for [N, C, H, W] inputs (gamma [C, 1, 1]), else [B, C, T, H, W] (gamma
    [C, 1, 1, 1]). The normalisation runs in float32 for half-precision inputs (as diffusers
    does); the official code relies on autocast for that.
    """

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.normalize(x.float(), dim=1).to(x.dtype)
        return normed * self.scale * self.gamma


class Upsample(nn.Upsample):
    """Nearest-exact upsampling computed in float32 (bf16 was unsupported by older kernels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


def _per_frame(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to each frame: [B, C, T, H, W] -> [B, C', T, H', W']."""
    b, c, t, h, w = x.shape
    y = fn(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


class Resample(nn.Module):
    """2x spatial down/up-sampling, optionally with 2x temporal down/up-sampling ('...3d').

    upsample3d: `time_conv` makes 2C channels, read as two frames per input frame, except in
    the first chunk, which is not doubled in time (the first latent frame decodes to 1 frame).
    downsample3d: `time_conv` (kernel 3, stride 2, no padding) runs on [last frame of the
    previous chunk, chunk]; the first chunk is not downsampled in time (1 frame -> 1 latent).
    """

    MODES = ("none", "upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, up_dim: int | None = None) -> None:
        if mode not in self.MODES:
            raise ValueError(f"Resample mode {mode!r} is not one of {self.MODES}")
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            # Wan2.1 halves the channels (up_dim None: the next stage's first residual block expects
            # dim // 2); the Wan2.2 VAE keeps them (up_dim = dim)
            self.resample = nn.Sequential(
                Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                nn.Conv2d(dim, dim // 2 if up_dim is None else up_dim, 3, padding=1),
            )
        elif mode.startswith("downsample"):
            # pad right/bottom only, so a stride-2 3x3 conv maps H to H/2
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        else:
            self.resample = nn.Identity()
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    @property
    def n_cache_slots(self) -> int:
        """History slots this block reads and returns (the time conv's; none for a 2D resample)."""
        return 1 if self.mode in ("upsample3d", "downsample3d") else 0

    # Runs eager under torch.compile (a graph break, no recompiles): its variants (2D / 3D, first,
    # second and later chunks, each stage's shapes) exceed dynamo's recompile limit, after which
    # the block would fall back to eager anyway, with a warning.
    @torch.compiler.disable
    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(y,) for a 2D resample; (y, history for the next chunk) for a 3D one, given `prev`."""
        # x: [B, C, T, H, W]
        hist = None
        if self.mode == "upsample3d":
            x, hist = self._upsample_time(x, prev)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x, hist = self._downsample_time(x, prev)
        return (x,) if hist is None else (x, hist)

    def _upsample_time(self, x: torch.Tensor, prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if prev is None:
            # first chunk: no temporal upsampling; history starts empty (zeros) after it (a copy
            # of no frames: a view would keep the whole chunk alive until the next one)
            return x, x[:, :, :0].clone()
        hist = history_after(x, prev)
        b, c, t, h, w = x.shape
        y = self.time_conv.conv_after(x, prev)  # [B, 2C, T, H, W]
        # channels [0:C] are frame 2t, [C:2C] frame 2t+1
        return y.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w), hist

    def _downsample_time(self, x: torch.Tensor, prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        hist = x[:, :, -1:].clone()
        if prev is None:
            return x, hist  # first chunk (1 frame) stays 1 frame
        return self.time_conv.conv_after(torch.cat([prev[:, :, -1:], x], dim=2), None), hist


class ResidualBlock(nn.Module):
    """(RMS_norm, SiLU, causal conv 3x3x3) twice, plus a 1x1x1 causal conv shortcut if C changes.

    A pure function of tensors (compilable as one region): `forward(x, prev1, prev2)` takes the
    histories of its two 3x3x3 convs and returns `(y, hist1, hist2)`; `run_cached` keeps them."""

    n_cache_slots = 2

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # index 5 is the dropout of the training code: kept as Identity so indices match the checkpoint
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False),
            nn.SiLU(),
            nn.Identity(),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, prev1: torch.Tensor | None = None,
                prev2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: [B, C_in, T, H, W] -> [B, C_out, T, H, W]; the 1x1x1 shortcut needs no history
        h = self.shortcut(x)
        r = self.residual
        x, hist1 = r[2].step(r[1](r[0](x)), prev1)
        x, hist2 = r[6].step(r[5](r[4](r[3](x))), prev2)
        return x + h, hist1, hist2


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame (frames do not mix)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMS_norm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        # x: [B, C, T, H, W]; `cache` is unused (no history), accepted for a uniform call
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames))  # [BT, 3C, H, W], channels ordered q | k | v
        qkv = qkv.reshape(b * t, 1, 3 * c, h * w).permute(0, 1, 3, 2)  # [BT, 1, HW, 3C]
        q, k, v = qkv.contiguous().chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)  # [BT, 1, HW, C]
        out = out.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
        out = self.proj(out)
        return out.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4) + x


def middle_blocks(dim: int) -> nn.Sequential:
    """The official `middle`: residual block, attention, residual block (keys middle.0/1/2)."""
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def head_blocks(in_dim: int, out_dim: int) -> nn.Sequential:
    """The official `head`: RMS norm, SiLU, causal conv 3x3x3 (keys head.0.gamma, head.2.*)."""
    return nn.Sequential(RMS_norm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1))


def run_cached(layers: nn.Sequential, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    """Run a sequence of blocks, keeping the causal history of those that have some: a causal
    conv takes the cache; a block with `n_cache_slots` (residual, resample) is called with its
    slots' histories and returns the new ones (`(y, *hists)`); the others (norm, SiLU, attention)
    take `x` alone."""
    for layer in layers:
        n = getattr(layer, "n_cache_slots", None)
        if isinstance(layer, CausalConv3d):
            x = layer(x, cache)
        elif n is None:
            x = layer(x)
        else:
            slots = cache.take(n)
            x, *hists = layer(x, *(cache.frames[s] for s in slots))
            for s, hist in zip(slots, hists):
                cache.frames[s] = hist
    return x


class Encoder3d(nn.Module):
    """Video [B, 3, T, H, W] -> [B, z_dim, T', H/2^k, W/2^k] (z_dim here is 2x the latent channels)."""

    def __init__(
        self,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        attn_scales: Sequence[float],
        temperal_downsample: Sequence[bool],
    ) -> None:
        super().__init__()
        dims = [dim * u for u in (1, *dim_mult)]
        scale = 1.0  # current spatial scale relative to the input, for attn_scales
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if temperal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*blocks)
        self.middle = middle_blocks(dims[-1])
        self.head = head_blocks(dims[-1], z_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = run_cached(self.downsamples, x, cache)
        x = run_cached(self.middle, x, cache)
        return run_cached(self.head, x, cache)


class Decoder3d(nn.Module):
    """Latents [B, z_dim, T', h, w] -> video [B, 3, T, h*2^k, w*2^k] (one latent frame per chunk).

    `_repeated_blocks`: what a regional compile compiles, block by block (lightx2v.models.wan.vae_decode)."""

    _repeated_blocks = ("middle", "upsamples")

    def __init__(
        self,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        attn_scales: Sequence[float],
        temperal_upsample: Sequence[bool],
    ) -> None:
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1], *reversed(dim_mult))]
        scale = 1.0 / 2 ** (len(dim_mult) - 2)
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = middle_blocks(dims[0])
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the previous stage's Resample halved the channels
            for _ in range(num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*blocks)
        self.head = head_blocks(dims[-1], 3)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = run_cached(self.middle, x, cache)
        x = run_cached(self.upsamples, x, cache)
        return run_cached(self.head, x, cache)
