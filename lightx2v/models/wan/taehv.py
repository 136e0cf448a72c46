"""TAEHV, the tiny video autoencoder, for the latent spaces of Wan2.1, Wan2.2 TI2V-5B and HunyuanVideo-1.5.

Design: `TinyVAE` is madebyollin/taehv's `TAEHV` (taehv.py) with the same `nn.Sequential` indices, so
the released files load with no renaming: `encoder.N...`, `decoder.N...` (128 tensors; 64 for a
decoder-only file). One implementation serves every variant; what differs is a `LatentSpace`
(latent channels, patch size) and a kind (which release: the latents it decodes, its activation,
its pixel range). Everything is a 2D conv on frames; time enters only through three block kinds:

* `MemBlock(x, past)`: convs over `cat(x, past)` where `past` is the same block's input one frame
  earlier (zeros before the first frame): the causal memory.
* `TPool` (encoder): `stride` consecutive frames folded into channels, a 1x1 conv back to C.
* `TGrow` (decoder): a 1x1 conv to `stride * C` channels, unfolded into `stride` frames.

Space: the decoder upsamples 8x; a variant with `patch_size` p > 1 ends with 3 p^2 channels that a
pixel shuffle spreads over p x p pixels (8p x in all), and its encoder starts from a pixel unshuffle
of the frames (3 p^2 input channels). Time: 4x (encoder TPool strides 2, 2, 1; decoder TGrow 1, 2, 2)
for all three; the decoder's first 3 frames precede the video (taehv's `frames_to_trim` = 2^2 - 1),
so T' latents give 4(T' - 1) + 1 frames, the full VAEs' count.

**Decoding is frame-chunked with the memory carried** (`decode_chunks`): each chunk of latent
frames runs through the decoder in parallel over its frames (the reference's `parallel=True`
inside the chunk), and each MemBlock's last input frame is kept (`TinyVAEState`) as the `past` of
the next chunk's first frame. That is the reference's all-at-once decode (the same convolutions on
the same frames; tested to 1e-5), in memory that does not grow with the video length; chunk 0 gives
1 frame and the others 4, as the full VAEs' chunks.

**Variants and releases** (what was found, and where):

| latent space (`LatentSpace`) | channels, patch | madebyollin/taehv | LightX2V (huggingface.co/lightx2v/Autoencoders) |
| --- | --- | --- | --- |
| Wan2.1 (and Wan2.2 A14B, which uses the Wan2.1 VAE) | 16, 1 | `taew2_1` | `lighttaew2_1` |
| Wan2.2 TI2V-5B | 48, 2 | `taew2_2` | `lighttaew2_2` |
| HunyuanVideo-1.5 | 32, 2 | `taehv1_5` | `lighttaehy1_5` |

* Shapes and forward: madebyollin/taehv `taehv.py` (`TAEHV.__init__`: `conv(3 * patch_size**2, 64)`
  first, `conv(64, 3 * patch_size**2)` last; `taew2_2` -> patch 2 / 48 channels, `taehv1_5` -> patch 2 /
  32 channels; `preprocess_input_frames` = `F.pixel_unshuffle`, `postprocess_output_frames` =
  `F.pixel_shuffle` then clamp to [0, 1]; `frames_to_trim = t_upscale - 1`).
* Latents: taehv's README says TAEHV applies no latent scale or shift: it decodes what the diffusion
  model produces. So `taew2_1` / `taew2_2` take the DiT's normalized latents ((mu - mean) / std) and
  `taehv1_5` the DiT's scaled latents (mu * scaling_factor), as they are. LightX2V's releases decode
  the VAE's own latents instead: ModelTC/LightX2V `lightx2v/models/video_encoders/hf/wan/vae_tiny.py`
  (`WanVAE_tiny` / `Wan2_2_VAE_tiny` with `need_scaled`: `z * std + mean`, the Wan2.1 / Wan2.2
  statistics; `need_scaled` is set when "lighttae" is in the file name, `lightx2v/pipeline.py`) and
  `.../hunyuanvideo15/lighttae_hy15.py` (`LightTaeHy15.decode`: latents / 1.03682, the VAE's
  scaling_factor).
* `lighttaehy1_5` differs in more than the latents: LightX2V's `.../hf/tae.py` builds it
  (`model_type="hy15"`) with LeakyReLU(0.2) for every activation (parameter-free: the same keys) and
  clamps its output to [-1, 1] (pixels in [-1, 1]; the others give [0, 1]), before the pixel shuffle.
* Not confirmed here (no weights at hand): the released files' dtypes for taew2_2, taehv1_5,
  lighttaew2_2 and lighttaehy1_5 (the kind rule below assumes madebyollin's fp16 and LightX2V's fp32,
  as for Wan2.1); that taehv1_5 takes the scaled (not the unscaled) HunyuanVideo-1.5 latents (the
  README's general statement only; 1.03682 is close to 1 either way); the input range of
  lighttaehy1_5's encoder (so `encode` refuses that kind). The "super" releases (`taew2_2_super`,
  `taehv1_5_super`: another decoder, 1x1 conv first, pixel-shuffle upsampling) are not implemented;
  their files are refused by name (lightx2v.models.wan.taehv_files).

**Latents.** `decode` takes what the family's full VAE `decode` takes (the DiT's latents) and returns
`[B, 3, F, 8p h, 8p w]` float32 in [-1, 1]; a kind that decodes raw latents gets
`latents * latents_std + latents_mean` (per channel; `TinyVAEConfig`: the family's VAE statistics,
by default the published ones). The file side (which variant and kind a file is, told from its
tensors; one-line errors) is lightx2v.models.wan.taehv_files. TAEHV works in `[N, T, C, H, W]`; the
conversions to our `[B, C, T, H, W]` are here.

`encode` follows the reference: frames padded at the end to a multiple of 4 by repeating the last
one; a video of 4k + 1 frames gives k + 1 latents, returned as the family's VAE `encode` returns them.
The pipelines still encode an image (I2V, TI2V) with the full VAE, as LightX2V does with its tiny VAE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightx2v.errors import InputError
from lightx2v.models.wan.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, latent_stats

__all__ = ["KINDS", "SPACES", "LatentSpace", "TinyVAE", "TinyVAEConfig", "TinyVAEFile", "TinyVAEState",
           "decode_pixel_bytes", "inspect_tiny_vae"]

ENCODER_WIDTH = 64
DECODER_WIDTHS = (256, 128, 64, 64)      # taehv's n_f: the three stages' widths, then the head's
ENCODER_TIME_DOWN = (True, True, False)  # TPool stride 2, 2, 1: 4 frames per latent
DECODER_TIME_UP = (False, True, True)    # TGrow stride 1, 2, 2: 4 frames per latent
TIME_STRIDE = 4
SPACE_STRIDE = 8                         # before the pixel shuffle of patch_size
LATENT_CHANNELS = 16                     # Wan2.1's (the default config)
HUNYUAN15_SCALING = 1.03682              # the HunyuanVideo-1.5 VAE's scaling_factor (its config.json)


@dataclass(frozen=True)
class LatentSpace:
    """A latent space TAEHV is released for: the network's shape and the two releases' names."""

    name: str
    title: str                  # in messages: "a Wan2.1 tiny VAE"
    latent_channels: int        # the first decoder conv's input channels
    patch_size: int             # pixel (un)shuffle side: the head gives 3 * patch_size**2 channels
    kinds: tuple[str, str]      # (madebyollin/taehv's release, LightX2V's distilled one)

    @property
    def spatial(self) -> int:
        return SPACE_STRIDE * self.patch_size


SPACES = {s.name: s for s in (
    LatentSpace("wan2.1", "Wan2.1", 16, 1, ("taew2_1", "lighttaew2_1")),
    LatentSpace("wan2.2", "Wan2.2 TI2V-5B", 48, 2, ("taew2_2", "lighttaew2_2")),
    LatentSpace("hunyuanvideo-1.5", "HunyuanVideo-1.5", 32, 2, ("taehv1_5", "lighttaehy1_5")),
)}


@dataclass(frozen=True)
class _Kind:
    space: str
    raw_latents: bool   # decodes the VAE's own latents (LightX2V's need_scaled), not the DiT's
    leaky: bool         # LeakyReLU(0.2) for every activation (LightX2V's hy15 model type), not ReLU
    signed: bool        # its pixels are in [-1, 1] (clamped so), not [0, 1]


_KINDS = {
    "taew2_1": _Kind("wan2.1", False, False, False), "lighttaew2_1": _Kind("wan2.1", True, False, False),
    "taew2_2": _Kind("wan2.2", False, False, False), "lighttaew2_2": _Kind("wan2.2", True, False, False),
    "taehv1_5": _Kind("hunyuanvideo-1.5", False, False, False),
    "lighttaehy1_5": _Kind("hunyuanvideo-1.5", True, True, True),
}
KINDS = tuple(_KINDS)


def check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise InputError(f"tiny VAE kind must be one of {', '.join(KINDS)}, got {kind!r}", field="tiny_vae_kind")


def published_latents(space: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) with raw VAE latents = DiT latents * std + mean, as the released VAEs define them."""
    if space == "wan2.2":
        from lightx2v.models.wan.vae22 import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

        return WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
    if space == "hunyuanvideo-1.5":  # DiT latents = mu * scaling_factor, no shift
        return (0.0,) * 32, (1.0 / HUNYUAN15_SCALING,) * 32
    return WAN21_LATENTS_MEAN, WAN21_LATENTS_STD


@dataclass(frozen=True)
class TinyVAEConfig:
    """Which release (`kind`, see the module docstring; it fixes the latent space), whether the file
    holds the encoder, and the per-channel map from the DiT's latents to the VAE's own ones
    (raw = latents * latents_std + latents_mean; None: the space's published values), which only the
    kinds that decode raw latents use."""

    kind: str = "taew2_1"
    encoder: bool = True
    latents_mean: Optional[tuple[float, ...]] = None
    latents_std: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        check_kind(self.kind)
        for name in ("latents_mean", "latents_std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.z_dim:
                raise InputError(f"tiny VAE {name} has {len(v)} values, expected {self.z_dim} ({self.kind})")

    space = property(lambda self: SPACES[_KINDS[self.kind].space])
    z_dim = property(lambda self: self.space.latent_channels)
    patch_size = property(lambda self: self.space.patch_size)
    raw_latents = property(lambda self: _KINDS[self.kind].raw_latents)
    leaky = property(lambda self: _KINDS[self.kind].leaky)
    signed = property(lambda self: _KINDS[self.kind].signed)

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean, std = published_latents(self.space.name)
        return self.latents_mean or mean, self.latents_std or std


def decode_pixel_bytes(config: TinyVAEConfig) -> int:
    """Decode working set per output pixel of one chunk (4 frames), fp32: the input and output of the
    last conv before the head (64 channels at 1 / patch_size of the resolution); counted, not measured."""
    return 2 * DECODER_WIDTHS[-1] * TIME_STRIDE * 4 // config.patch_size ** 2


# ---------------------------------------------------------------- blocks (taehv.py's, same parameter names)


def conv3x3(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


def activation(leaky: bool) -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True) if leaky else nn.ReLU(inplace=True)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3) before the decoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """act(convs(cat(x, past)) + skip(x)); `past`: this block's input one frame earlier. x: [NT, C, H, W]."""

    def __init__(self, n_in: int, n_out: int, leaky: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(conv3x3(n_in * 2, n_out), activation(leaky), conv3x3(n_out, n_out),
                                  activation(leaky), conv3x3(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = activation(leaky)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TPool(nn.Module):
    """`stride` consecutive frames -> one: [NT, C, H, W] -> [NT / stride, C, H, W]."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f * stride, n_f, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        return self.conv(x.reshape(-1, self.stride * c, h, w))


class TGrow(nn.Module):
    """One frame -> `stride` frames: [NT, C, H, W] -> [NT * stride, C, H, W] (channel group j is frame j)."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        return self.conv(x).reshape(-1, c, h, w)


def build_encoder(z_dim: int = LATENT_CHANNELS, patch: int = 1, leaky: bool = False) -> nn.Sequential:
    """taehv's encoder: conv (from 3 * patch^2 channels), act, then 3 x (TPool, strided conv, 3 MemBlocks),
    conv to z. Indices 0..17."""
    n = ENCODER_WIDTH
    layers: list[nn.Module] = [conv3x3(3 * patch * patch, n), activation(leaky)]
    for down in ENCODER_TIME_DOWN:
        layers += [TPool(n, 2 if down else 1), conv3x3(n, n, stride=2, bias=False), MemBlock(n, n, leaky),
                   MemBlock(n, n, leaky), MemBlock(n, n, leaky)]
    return nn.Sequential(*layers, conv3x3(n, z_dim))


def build_decoder(z_dim: int = LATENT_CHANNELS, patch: int = 1, leaky: bool = False) -> nn.Sequential:
    """taehv's decoder: clamp, conv, act, then 3 x (3 MemBlocks, 2x upsample, TGrow, conv), act, conv to
    3 * patch^2 channels. Indices 0..22."""
    n = DECODER_WIDTHS
    layers: list[nn.Module] = [Clamp(), conv3x3(z_dim, n[0]), activation(leaky)]
    for i, up in enumerate(DECODER_TIME_UP):
        layers += [MemBlock(n[i], n[i], leaky), MemBlock(n[i], n[i], leaky), MemBlock(n[i], n[i], leaky),
                   nn.Upsample(scale_factor=2), TGrow(n[i], 2 if up else 1), conv3x3(n[i], n[i + 1], bias=False)]
    return nn.Sequential(*layers, activation(leaky), conv3x3(n[3], 3 * patch * patch))


# ---------------------------------------------------------------- running over time


@dataclass
class TinyVAEState:
    """The causal memory between chunks: each MemBlock's last input frame ([N, 1, C, H, W]), by its
    index in the network, and the frames still to drop (the decoder's first 3). `reset()` before a video."""

    memory: dict[int, torch.Tensor] = field(default_factory=dict)
    trim: int = 0

    def reset(self, trim: int = 0) -> None:
        self.memory.clear()
        self.trim = trim


def run_with_memory(blocks: nn.Sequential, x: torch.Tensor, n: int, state: TinyVAEState) -> torch.Tensor:
    """Apply `blocks` to the frames of one chunk, in parallel over time.

    x: [N * T, C, H, W], each sample's T frames consecutive and in order. A MemBlock's `past` is its
    input shifted one frame later: the first frame's comes from `state` (the previous chunk's last
    frame; zeros at the start), and this chunk's last input frame is stored for the next."""
    for i, block in enumerate(blocks):
        if isinstance(block, MemBlock):
            frames = x.view(n, -1, *x.shape[1:])                     # [N, T, C, H, W]
            first = state.memory.get(i)
            if first is None:
                first = frames.new_zeros(n, 1, *frames.shape[2:])
            past = torch.cat([first, frames[:, :-1]], 1).reshape(x.shape)
            state.memory[i] = frames[:, -1:].clone()                 # a copy: the chunk's activations are freed
            x = block(x, past)
        else:
            x = block(x)
    return x


def _to_frames(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B * T, C, H, W] (each sample's frames consecutive)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _from_frames(x: torch.Tensor, b: int) -> torch.Tensor:
    """[B * T, C, H, W] -> [B, C, T, H, W]."""
    bt, c, h, w = x.shape
    return x.view(b, bt // b, c, h, w).permute(0, 2, 1, 3, 4)


class TinyVAE(nn.Module):
    """TAEHV (`encoder`, `decoder`: nn.Sequential with taehv.py's indices) in the variant its config's
    kind names; see the module docstring. `decode` / `decode_chunks` have the full VAEs' interface
    (lightx2v.models.wan.vae_decode)."""

    def __init__(self, config: TinyVAEConfig = TinyVAEConfig()) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = build_encoder(c.z_dim, c.patch_size, c.leaky) if c.encoder else None
        self.decoder = build_decoder(c.z_dim, c.patch_size, c.leaky)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1 / std) as [1, z, 1, 1, 1] float32 tensors (lightx2v.models.wan.vae.latent_stats)."""
        return latent_stats(*self.config.stats(), like)

    def _check_latents(self, latents: torch.Tensor) -> None:
        z = self.config.z_dim
        if latents.ndim != 5 or latents.shape[1] != z:
            raise InputError(f"tiny VAE decode expects latents [B, {z}, T, h, w], got shape {tuple(latents.shape)}")

    def _pixels(self, y: torch.Tensor) -> torch.Tensor:
        """The decoder's output [B * T, 3 p^2, h, w] -> frames [B * T, 3, p h, p w] float32 in [-1, 1]."""
        if self.config.patch_size > 1:
            y = F.pixel_shuffle(y, self.config.patch_size)
        if self.config.signed:  # lighttaehy1_5 gives [-1, 1] pixels itself
            return y.float().clamp_(-1.0, 1.0)
        return y.float().clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)  # taehv's [0, 1] -> ours

    @torch.no_grad()
    def decode_chunks(self, latents: torch.Tensor, state: Optional[TinyVAEState] = None, progress: bool = False,
                      chunk: int = 1) -> Iterator[torch.Tensor]:
        """DiT latents [B, z, T', h, w] -> the video's chunks [B, 3, f, 8p h, 8p w] float32 in [-1, 1],
        `chunk` latent frames at a time (f = 4 * chunk; the first chunk 3 frames fewer), the memory
        carried between chunks in `state` (reset here). `chunk` <= 0: all latent frames at once."""
        from tqdm.auto import tqdm

        self._check_latents(latents)
        z = latents.float()
        if self.config.raw_latents:  # LightX2V's releases decode the VAE's own latents
            mean, inv_std = self._stats(z)
            z = z / inv_std + mean
        z = z.to(self.dtype)
        b, t = z.shape[0], z.shape[2]
        step = t if chunk <= 0 else chunk
        state = state if state is not None else TinyVAEState()
        state.reset(trim=TIME_STRIDE - 1)
        try:
            for i in tqdm(range(0, t, step), desc="tiny vae decode", unit="chunk", disable=not progress, leave=False):
                y = self._pixels(run_with_memory(self.decoder, _to_frames(z[:, :, i : i + step]), b, state))
                y = _from_frames(y, b)
                if state.trim:  # the decoder's first frames precede the video (taehv's frames_to_trim)
                    drop = min(state.trim, y.shape[2])
                    y, state.trim = y[:, :, drop:], state.trim - drop
                yield y
        finally:
            state.reset()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: Optional[TinyVAEState] = None, progress: bool = False,
               on_chunk: Optional[Callable[[torch.Tensor], None]] = None, chunk: int = 1) -> torch.Tensor:
        """DiT latents [B, z, T', h, w] -> video [B, 3, 4(T'-1) + 1, 8p h, 8p w] float32 in [-1, 1], as the
        full VAE's `decode`; `on_chunk(pixels)` sees each chunk as soon as it is decoded."""
        out = []
        for piece in self.decode_chunks(latents, state, progress, chunk):
            out.append(piece)
            if on_chunk is not None:
                on_chunk(piece)
        return torch.cat(out, dim=2)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, state: Optional[TinyVAEState] = None, chunk: int = 1) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> DiT latents [B, z, ceil(T / 4), H/8p, W/8p] float32.

        As the reference: frames padded at the end (the last one repeated) to a multiple of 4; 4 frames
        per latent, `chunk` latents' frames at a time with the memory carried (<= 0: all at once)."""
        c = self.config
        if self.encoder is None:
            raise InputError("this tiny VAE file holds no encoder (decoder weights only)")
        if c.signed:
            raise InputError(f"{c.kind}'s encoder is not supported: the pixel range it takes is not published "
                             "(encode with the VAE)")
        s = c.space.spatial
        if video.ndim != 5 or video.shape[1] != 3 or video.shape[3] % s or video.shape[4] % s:
            raise InputError(f"tiny VAE encode expects a video [B, 3, T, H, W] with H and W multiples of {s}, "
                             f"got shape {tuple(video.shape)}")
        x = video.to(self.dtype).add(1.0).div_(2.0)  # TAEHV encodes pixels in [0, 1]
        if x.shape[2] % TIME_STRIDE:
            pad = TIME_STRIDE - x.shape[2] % TIME_STRIDE
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        b, t = x.shape[0], x.shape[2]
        step = t if chunk <= 0 else chunk * TIME_STRIDE
        state = state if state is not None else TinyVAEState()
        state.reset()
        out = []
        try:
            for i in range(0, t, step):
                frames = _to_frames(x[:, :, i : i + step])
                if c.patch_size > 1:  # taehv's preprocess_input_frames
                    frames = F.pixel_unshuffle(frames, c.patch_size)
                out.append(_from_frames(run_with_memory(self.encoder, frames, b, state), b))
        finally:
            state.reset()
        z = torch.cat(out, dim=2).float()
        if c.raw_latents:  # LightX2V's latents are the VAE's own: map them as the VAE's encode does
            mean, inv_std = self._stats(z)
            z = (z - mean) * inv_std
        return z


# ---------------------------------------------------------------- files (lightx2v.models.wan.taehv_files)


@dataclass(frozen=True)
class TinyVAEFile:
    """A tiny VAE file that was checked: its path, its config, and how the kind was decided."""

    path: str
    config: TinyVAEConfig
    reason: str

    @property
    def kind(self) -> str:
        return self.config.kind


def inspect_tiny_vae(path: str | os.PathLike, kind: Optional[str] = None, space: str = "wan2.1",
                     latents_mean: Optional[tuple[float, ...]] = None,
                     latents_std: Optional[tuple[float, ...]] = None) -> TinyVAEFile:
    """Check a tiny VAE file for latent space `space` and decide its kind (`kind` given: that one);
    see lightx2v.models.wan.taehv_files.inspect_tiny_vae."""
    from lightx2v.models.wan.taehv_files import inspect_tiny_vae as inspect

    return inspect(path, kind, space, latents_mean, latents_std)
