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
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from lightx2v.errors import InputError
from lightx2v.models.wan.vae_blocks import CausalCache


class VAEDecode:
    """Mixin: `decode_chunks`, `decode`, `set_memory_format`, `_repeated_blocks` (see the module docstring).

    The host class has `config` (z_dim, latents_mean, latents_std), `conv2` and `decoder` (with
    its own `_repeated_blocks`, names relative to the decoder)."""

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

    def _decode_one(self, chunk: torch.Tensor, cache: CausalCache, i: int) -> torch.Tensor:
        raise NotImplementedError

    def _to_pixels(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def decode_chunks(self, latents: torch.Tensor, cache: CausalCache | None = None,
                      progress: bool = False) -> Iterator[torch.Tensor]:
        """Normalized latents [B, z, T', h, w] -> the video's chunks, one per latent frame (the first
        1 frame, the others scale_factor_temporal frames), each as `decode` returns pixels.

        Undoes the normalisation (the reference divides by 1/std), runs conv2, then the decoder one
        latent frame at a time with the causal cache, as the references chunk it. `progress`: a bar
        over the latent frames."""
        from tqdm.auto import tqdm

        z_dim = self.config.z_dim
        if latents.ndim != 5 or latents.shape[1] != z_dim:
            raise InputError(f"VAE decode expects latents [B, {z_dim}, T, h, w], got shape {tuple(latents.shape)}")
        from lightx2v.models.wan.vae import latent_stats

        mean, inv_std = latent_stats(self.config.latents_mean, self.config.latents_std, latents)
        z = latents.float() / inv_std + mean
        x = self.conv2(z.to(self.conv2.weight.dtype))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        cache = cache if cache is not None else CausalCache()
        cache.reset()
        try:
            for i in tqdm(range(x.shape[2]), desc="vae decode", unit="latent frame", disable=not progress,
                          leave=False):
                cache.start_chunk()
                yield self._to_pixels(self._decode_one(x[:, :, i : i + 1], cache, i))
        finally:
            cache.reset()  # also when the consumer stops early (an error, an interrupt)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, cache: CausalCache | None = None, progress: bool = False,
               on_chunk: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
        """Normalized latents [B, z, T', h, w] -> video [B, 3, 1 + 4(T'-1), H, W], float32 (the
        chunks of `decode_chunks`, concatenated). `on_chunk(pixels)` sees each chunk as soon as it
        is decoded, before the next one decodes (the streamed save)."""
        chunks = []
        for chunk in self.decode_chunks(latents, cache, progress):
            chunks.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
        return torch.cat(chunks, dim=2)
