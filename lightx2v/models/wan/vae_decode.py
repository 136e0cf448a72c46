"""What both Wan VAEs' decode share: the latent-frame-by-frame loop, as a stream of pixel chunks,
and the decoder's switchable speed options.

Design: `VAEDecode` is a mixin of `WanVAE` and `Wan22VAE`. `decode_chunks(latents)` yields the
video one latent frame at a time ([B, 3, 1 or 4, H, W], float32, in [-1, 1]), so that a consumer
(the streamed mp4 save, lightx2v.io.stream) works on a chunk while the next one decodes;
`decode(latents)` is their concatenation, equal to the one-piece decode the references do (the
decode is causal and chunked in both). A family supplies `_decode_one(chunk, cache, i)` (its
decoder on latent frame i) and `_to_pixels(y)` (unpatchify, cast, clamp).

Options (each off by default, each compared with the default path by tests/models/test_vae_fast.py):

* `set_memory_format(channels_last=True)`: the decoder's conv weights (and its input) in
  channels-last(-3d) layout; cuDNN then runs every conv NDHWC, and the per-frame 2D resamples
  need no transposing copies. Values: the same up to the conv algorithms' summation order.
* `_repeated_blocks`: the decoder's blocks that the engine's regional compile
  (lightx2v.runtime.engine.compile_blocks, on with CompileConfig(enabled=True, vae=True)) compiles
  one by one. The blocks are pure functions of tensors (vae_blocks.run_cached keeps the causal
  history outside them), so a compiled block is not specialised per cache slot.
* `set_tiling(VAETiling(...))`: decode and encode in overlapping spatial tiles, each through the
  whole time loop, blended (lightx2v.models.wan.vae_tiling; compared with the untiled path and
  diffusers' tiled decode by tests/models/test_vae_tiling.py). `_tile_grid` and `_tile_unit` are what
  the encoders ask.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from lightx2v.errors import InputError
from lightx2v.models.wan.vae_blocks import CausalCache
from lightx2v.models.wan.vae_tiling import TileGrid, VAETiling, run_tiles


class VAEDecode:
    """Mixin: `decode_chunks`, `decode`, `set_memory_format`, `_repeated_blocks` (see the module docstring).

    The host class has `config` (z_dim, latents_mean, latents_std, scale_factor_spatial, and
    patch_size for a patchifying VAE), `conv2` and `decoder` (with its own `_repeated_blocks`, names
    relative to the decoder)."""

    tiling: VAETiling | None = None  # set_tiling; None: whole frames

    @property
    def _repeated_blocks(self) -> tuple[str, ...]:
        return tuple(f"decoder.{name}" for name in self.decoder._repeated_blocks)

    @property
    def channels_last(self) -> bool:
        return bool(getattr(self.decoder, "channels_last", False))

    def set_memory_format(self, channels_last: bool) -> "VAEDecode":
        """The decoder's conv weights (3D: channels_last_3d, 2D: channels_last) and its input in
        channels-last layout (True) or contiguous (False, the default); returns self. `Module.to`
        (dtype, device) keeps the layout."""
        fmt3, fmt2 = ((torch.channels_last_3d, torch.channels_last) if channels_last
                      else (torch.contiguous_format, torch.contiguous_format))
        for module in (self.conv2, *self.decoder.modules()):
            if isinstance(module, (nn.Conv3d, nn.Conv2d)):
                fmt = fmt3 if isinstance(module, nn.Conv3d) else fmt2
                module.weight.data = module.weight.data.contiguous(memory_format=fmt)
        self.decoder.channels_last = bool(channels_last)
        return self

    def set_tiling(self, tiling: VAETiling | None) -> "VAEDecode":
        """Decode and encode in spatial tiles (None: whole frames, the default); returns self.
        A tiling this VAE cannot cut (sizes not multiples of its compression) is refused here."""
        if tiling is not None:
            tiling.latent(self.config.scale_factor_spatial)
        self.tiling = tiling
        return self

    @property
    def _tile_unit(self) -> int:
        """Pixels of the decoder's output (and the encoder's input) per latent pixel: the spatial
        compression over the patch size (8 for both Wan VAEs)."""
        return self.config.scale_factor_spatial // getattr(self.config, "patch_size", 1)

    def _tile_grid(self, height: int, width: int) -> TileGrid | None:
        """The tiles of a latent frame of height x width (None: untiled, or it fits in one tile)."""
        if self.tiling is None:
            return None
        return TileGrid.plan(height, width, self.tiling, self.config.scale_factor_spatial)

    def _decode_one(self, chunk: torch.Tensor, cache: CausalCache, i: int) -> torch.Tensor:
        raise NotImplementedError

    def _to_pixels(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decoded(self, x: torch.Tensor, cache: CausalCache, bar) -> Iterator[torch.Tensor]:
        """The decoder's raw output (before `_to_pixels`) one latent frame of `x` (after conv2) at a
        time, with the causal cache, as the references chunk it; reset before and after."""
        cache.reset()
        try:
            for i in range(x.shape[2]):
                cache.start_chunk()
                yield self._decode_one(x[:, :, i : i + 1], cache, i)
                bar.update()
        finally:
            cache.reset()  # also when the consumer stops early (an error, an interrupt)

    @torch.no_grad()
    def decode_chunks(self, latents: torch.Tensor, cache: CausalCache | None = None,
                      progress: bool = False) -> Iterator[torch.Tensor]:
        """Normalized latents [B, z, T', h, w] -> the video's chunks, one per latent frame (the first
        1 frame, the others scale_factor_temporal frames), each as `decode` returns pixels.

        Undoes the normalisation (the reference divides by 1/std), runs conv2, then the decoder one
        latent frame at a time with the causal cache, as the references chunk it. With `set_tiling`
        and a frame larger than a tile, every tile is decoded first (vae_tiling: tile-major), then
        the chunks are yielded (slices of one video, which `decode` returns without a copy).
        `progress`: a bar over the latent frames (of every tile)."""
        from tqdm.auto import tqdm

        z_dim = self.config.z_dim
        if latents.ndim != 5 or latents.shape[1] != z_dim:
            raise InputError(f"VAE decode expects latents [B, {z_dim}, T, h, w], got shape {tuple(latents.shape)}")
        from lightx2v.models.wan.vae import latent_stats

        mean, inv_std = latent_stats(self.config.latents_mean, self.config.latents_std, latents)
        z = latents.float() / inv_std + mean
        x = self.conv2(z.to(self.conv2.weight.dtype))
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        cache = cache if cache is not None else CausalCache()
        grid = self._tile_grid(x.shape[3], x.shape[4])
        with tqdm(total=x.shape[2] * (1 if grid is None else len(grid)), disable=not progress, leave=False,
                  desc="vae decode" if grid is None else f"vae decode ({len(grid)} tiles)", unit="latent frame") as bar:
            if grid is None:
                for y in self._decoded(x, cache, bar):
                    yield self._to_pixels(y)
                return
            sizes: list[int] = []

            def run(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
                # one tile through every latent frame: [B, C_out, F, (r1-r0)*unit, (c1-c0)*unit]
                chunks = list(self._decoded(x[..., r0:r1, c0:c1].contiguous(memory_format=fmt), cache, bar))
                sizes[:] = [y.shape[2] for y in chunks]
                return torch.cat(chunks, dim=2)

            u = self._tile_unit
            canvas = run_tiles(grid, u, run, lambda y: (*y.shape[:3], x.shape[3] * u, x.shape[4] * u))
        video = self._to_pixels(canvas)  # unpatchify / cast / clamp (in place where it can)
        del canvas
        start = 0
        for n in sizes:
            yield video[:, :, start : start + n]
            start += n

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, cache: CausalCache | None = None, progress: bool = False,
               on_chunk: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
        """Normalized latents [B, z, T', h, w] -> video [B, 3, 1 + 4(T'-1), H, W], float32 (the
        chunks of `decode_chunks`, concatenated). `on_chunk(pixels)` sees each chunk as soon as it
        is decoded, before the next one decodes (the streamed save); with tiling, once every tile is."""
        chunks = []
        for chunk in self.decode_chunks(latents, cache, progress):
            chunks.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
        whole = _sliced_from(chunks)
        return whole if whole is not None else torch.cat(chunks, dim=2)

    def _encode_tiled(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor | None:
        """The posterior mean of the encoder's input `x` [B, C, T, H, W] (patchified for Wan2.2)
        tile by tile, blended; None when untiled (no tiling, or the frame fits in one tile). The
        host's `_encode_frames(x, cache)` encodes one tile through every time chunk."""
        u = self._tile_unit
        grid = self._tile_grid(x.shape[3] // u, x.shape[4] // u)
        if grid is None:
            return None
        if x.shape[3] % u or x.shape[4] % u:
            raise InputError(f"tiled VAE encode needs a frame whose sides are multiples of {u} pixels, got "
                             f"{x.shape[3]}x{x.shape[4]}")

        def run(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
            return self._encode_frames(x[..., r0 * u : r1 * u, c0 * u : c1 * u], cache)

        return run_tiles(grid, 1, run, lambda mu: (*mu.shape[:3], x.shape[3] // u, x.shape[4] // u))


def _sliced_from(chunks: list[torch.Tensor]) -> torch.Tensor | None:
    """The video that `chunks` are consecutive time slices of, covering it whole (a tiled decode's
    chunks: no second copy of the video is made), else None."""
    whole = chunks[0]._base if chunks else None
    if whole is None or whole.dim() != 5 or whole.shape[2] != sum(c.shape[2] for c in chunks):
        return None
    start = 0
    for c in chunks:
        if (c._base is not whole or c.shape[:2] != whole.shape[:2] or c.shape[3:] != whole.shape[3:]
                or c.stride() != whole.stride() or c.storage_offset() != whole.storage_offset() + start * whole.stride(2)):
            return None
        start += c.shape[2]
    return whole
