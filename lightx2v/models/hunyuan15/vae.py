"""The HunyuanVideo-1.5 video VAE: 3D causal encoder/decoder, 32 latent channels, 16x spatial and 4x
temporal compression.

Design: `HunyuanVideo15VAE` is the official `AutoencoderKLConv3D` (tencent/HunyuanVideo-1.5,
hyvideo/models/autoencoders/hunyuanvideo_15_vae.py) with its module and parameter names (`encoder.down.{i}
.block.{j}`, `encoder.mid.attn_1.q`, `decoder.up.{i}.upsample` ...), so the released
`vae/diffusion_pytorch_model.safetensors` loads without renaming; a diffusers `AutoencoderKLHunyuanVideo15`
file is renamed by `vae_keys.state_dict_from_diffusers`. No buffers: the causal mask is built per call.

Time, as the reference: the whole clip goes through the encoder or decoder at once, causally (frame 0
alone, then groups of 4 frames per latent frame; vae_blocks). Unlike the Wan VAEs there is no per-chunk
loop with a cache in the reference (its mid-block attention spans every earlier frame), so none here;
`decode_chunks` yields slices of the one decoded video, in the Wan VAEs' chunking (1 frame, then 4 per
latent frame), for consumers written against them.

Scaling, as the pipelines: `encode` returns the posterior mean times `scaling_factor` (what the DiT sees:
the I2V condition latents), `decode` takes DiT latents and divides by it first; a `shift_factor` (null
in the release) is added after the division as the official decode does, and subtracted by `encode`
(the inverse; the official I2V encode omits it, which cannot matter while it is null).

Tiling (`set_tiling(VAETiling(tile, overlap))`, off by default; the same API and helpers as the Wan VAEs,
lightx2v.models.wan.vae_tiling): decode and encode in overlapping square tiles of `tile` pixels, blended
linearly in raster order as diffusers' and the reference's tiled decode/encode (the decoder's raw output is
blended, before the clamp). The reference's pipeline always decodes tiled (256 px tiles overlapping by 32
px on a GPU over 21 GB, else 128 / 32); diffusers' `enable_tiling` default is 256 / 64.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lightx2v.errors import InputError
from lightx2v.models.hunyuan15.vae_blocks import AttnBlock, CausalConv3d, Downsample, ResnetBlock, RMSNorm, Upsample
from lightx2v.models.hunyuan15.vae_config import RGB, HunyuanVideo15VAEConfig
from lightx2v.models.wan.vae_tiling import TileGrid, VAETiling, run_tiles

__all__ = ["HunyuanVideo15VAE"]


class _Mid(nn.Module):
    """block_1 -> attn_1 (frame-causal) -> block_2, at the deepest width."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(dim, dim)
        self.attn_1 = AttnBlock(dim)
        self.block_2 = ResnetBlock(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: `block` (residual blocks), then an optional `downsample` / `upsample`."""

    def __init__(self, widths: list[tuple[int, int]], resample: tuple[str, nn.Module] | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(a, b) for a, b in widths)
        if resample is not None:
            self.add_module(*resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        for name in ("downsample", "upsample"):
            if name in self._modules:
                x = self._modules[name](x)
        return x


class Encoder(nn.Module):
    """Video [B, 3, 1 + 4k, H, W] -> moments [B, 2z, 1 + k, H/16, W/16] (mean, then log-variance)."""

    def __init__(self, c: HunyuanVideo15VAEConfig) -> None:
        super().__init__()
        ch, z2 = c.block_out_channels, 2 * c.latent_channels
        self.conv_in = CausalConv3d(c.in_channels, ch[0])
        stages, width = c.down_stages(), ch[0]
        self.down = nn.ModuleList()
        for i, out in enumerate(ch):
            widths = [(width if j == 0 else out, out) for j in range(c.layers_per_block)]
            resample = None
            if i < len(stages):
                _, nxt, temporal = stages[i]
                resample, out = ("downsample", Downsample(out, nxt, temporal)), nxt
            self.down.append(_Level(widths, resample))
            width = out
        self.mid = _Mid(width)
        self.norm_out = RMSNorm(width)
        self.conv_out = CausalConv3d(width, z2)
        self.group = width // z2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        b, c, t, hh, ww = h.shape
        shortcut = h.view(b, c // self.group, self.group, t, hh, ww).mean(dim=2)  # [B, 2z, ...]
        return self.conv_out(F.silu(self.norm_out(h))) + shortcut


class Decoder(nn.Module):
    """Latents [B, z, T', h, w] -> video [B, 3, 1 + 4(T'-1), 16h, 16w] (unclamped)."""

    def __init__(self, c: HunyuanVideo15VAEConfig) -> None:
        super().__init__()
        ch = c.block_out_channels[::-1]
        self.conv_in = CausalConv3d(c.latent_channels, ch[0])
        self.repeats = ch[0] // c.latent_channels
        self.mid = _Mid(ch[0])
        stages, width = c.up_stages(), ch[0]
        self.up = nn.ModuleList()
        for i, out in enumerate(ch):
            widths = [(width if j == 0 else out, out) for j in range(c.layers_per_block + 1)]
            resample = None
            if i < len(stages):
                _, nxt, temporal = stages[i]
                resample, out = ("upsample", Upsample(out, nxt, temporal)), nxt
            self.up.append(_Level(widths, resample))
            width = out
        self.norm_out = RMSNorm(width)
        self.conv_out = CausalConv3d(width, c.out_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # the latent's channels repeated to the first width: a parameter-free shortcut around conv_in
        h = self.mid(self.conv_in(z) + z.repeat_interleave(self.repeats, dim=1))
        for level in self.up:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class HunyuanVideo15VAE(nn.Module):
    """Official `AutoencoderKLConv3D`: `encoder`, `decoder`. See the module docstring."""

    def __init__(self, config: HunyuanVideo15VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.tiling: VAETiling | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_in.conv.weight.dtype

    def set_tiling(self, tiling: VAETiling | None) -> "HunyuanVideo15VAE":
        """Decode and encode in spatial tiles (None: whole frames, the default); returns self. A tiling
        this VAE cannot cut (sizes not multiples of 16 pixels) is refused here."""
        if tiling is not None:
            tiling.latent(self.config.ffactor_spatial)
        self.tiling = tiling
        return self

    def _grid(self, height: int, width: int) -> TileGrid | None:
        # the tiles of a latent frame of height x width; None: untiled, or it fits in one tile
        return None if self.tiling is None else TileGrid.plan(height, width, self.tiling, self.config.ffactor_spatial)

    # ---- encode

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, 1 + 4k, H, W] in [-1, 1], H and W multiples of 16 -> DiT latents
        [B, z, 1 + k, H/16, W/16], float32: (posterior mean - shift) * scaling_factor."""
        s, t = self.config.ffactor_spatial, self.config.ffactor_temporal
        if (video.ndim != 5 or video.shape[1] != RGB or (video.shape[2] - 1) % t
                or video.shape[3] % s or video.shape[4] % s):
            raise InputError(f"VAE encode expects a video [B, 3, 1 + {t}k, H, W] with H and W multiples of {s}, "
                             f"got shape {tuple(video.shape)}")
        x = video.to(self.dtype)
        z = self.config.latent_channels
        grid = self._grid(x.shape[3] // s, x.shape[4] // s)
        if grid is None:
            mu = self.encoder(x)[:, :z]
        else:
            def run(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
                return self.encoder(x[..., r0 * s : r1 * s, c0 * s : c1 * s])[:, :z]

            mu = run_tiles(grid, 1, run, lambda m: (*m.shape[:3], x.shape[3] // s, x.shape[4] // s))
        mu = mu.float()
        if self.config.shift_factor:
            mu = mu - self.config.shift_factor
        return mu * self.config.scaling_factor

    # ---- decode

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, progress: bool = False,
               on_chunk: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
        """DiT latents [B, z, T', h, w] -> video [B, 3, 1 + 4(T'-1), 16h, 16w], float32, clamped to [-1, 1].
        `on_chunk` sees the video's chunks (`decode_chunks`) once it is decoded; `progress`: a bar over tiles."""
        video = self._decode(latents, progress)
        if on_chunk is not None:
            for chunk in _chunks(video, self.config.ffactor_temporal):
                on_chunk(chunk)
        return video

    @torch.no_grad()
    def decode_chunks(self, latents: torch.Tensor, progress: bool = False) -> Iterator[torch.Tensor]:
        """The decoded video in the Wan VAEs' chunks (frame 0, then 4 frames per latent frame): slices
        of one decode (the reference decodes the clip at once)."""
        yield from _chunks(self._decode(latents, progress), self.config.ffactor_temporal)

    def _unscale(self, latents: torch.Tensor) -> torch.Tensor:
        # DiT latents -> what the decoder takes: / scaling_factor (+ shift_factor), in the VAE's dtype
        c = self.config
        z = latents.float() / c.scaling_factor
        if c.shift_factor:
            z = z + c.shift_factor
        return z.to(self.dtype)

    def raw_decoder(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor], int]:
        """(decode_fn, finish, pixels per latent pixel) for a decode whose pieces are blended before the
        clamp, as the tiled decode does (lightx2v.runtime.parallel.vae): decode_fn the whole clip through
        `decoder` untiled, unclamped; finish the clamp to [-1, 1]."""

        @torch.no_grad()
        def decode_fn(latents: torch.Tensor) -> torch.Tensor:
            return self.decoder(self._unscale(latents))  # [B, 3, F, 16h, 16w], unclamped

        return decode_fn, (lambda y: y.float().clamp_(-1.0, 1.0)), self.config.ffactor_spatial

    def _decode(self, latents: torch.Tensor, progress: bool) -> torch.Tensor:
        from tqdm.auto import tqdm

        c = self.config
        if latents.ndim != 5 or latents.shape[1] != c.latent_channels:
            raise InputError(f"VAE decode expects latents [B, {c.latent_channels}, T, h, w], "
                             f"got shape {tuple(latents.shape)}")
        z = self._unscale(latents)
        grid = self._grid(z.shape[3], z.shape[4])
        with tqdm(total=1 if grid is None else len(grid), disable=not progress, leave=False,
                  desc="vae decode", unit="tile") as bar:
            if grid is None:
                y = self.decoder(z)
                bar.update()
            else:
                u = c.ffactor_spatial

                def run(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
                    out = self.decoder(z[..., r0:r1, c0:c1])  # [B, 3, T, (r1-r0)*16, (c1-c0)*16]
                    bar.update()
                    return out

                y = run_tiles(grid, u, run, lambda o: (*o.shape[:3], z.shape[3] * u, z.shape[4] * u))
        return y.float().clamp_(-1.0, 1.0)


def _chunks(video: torch.Tensor, step: int) -> Iterator[torch.Tensor]:
    # video: [B, 3, 1 + step * n, H, W] -> [B, 3, 1, H, W], then n slices of `step` frames
    yield video[:, :, :1]
    for start in range(1, video.shape[2], step):
        yield video[:, :, start : start + step]
