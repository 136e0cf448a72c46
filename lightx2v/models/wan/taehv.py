"""TAEHV, the tiny video autoencoder for the Wan2.1 latent space: taew2_1 and LightX2V's lighttaew2_1.

Design: `TinyVAE` is madebyollin/taehv's `TAEHV` (taehv.py) in its Wan2.1 configuration (16 latent
channels, no pixel shuffle, time 4x down in the encoder and 4x up in the decoder), with the same
`nn.Sequential` indices, so the released files (`taew2_1.pth` / `.safetensors`, 128 tensors) load
with no renaming: `encoder.N...`, `decoder.N...`. Everything is a 2D conv on frames; time enters
only through three block kinds:

* `MemBlock(x, past)`: convs over `cat(x, past)` where `past` is the same block's input one frame
  earlier (zeros before the first frame): the causal memory.
* `TPool` (encoder): `stride` consecutive frames folded into channels, a 1x1 conv back to C.
* `TGrow` (decoder): a 1x1 conv to `stride * C` channels, unfolded into `stride` frames.

**Decoding is frame-chunked with the memory carried** (`decode_chunks`): each chunk of latent
frames runs through the decoder in parallel over its frames (the reference's `parallel=True`
inside the chunk), and each MemBlock's last input frame is kept (`TinyVAEState`) as the `past` of
the next chunk's first frame. That is the reference's all-at-once decode (the same convolutions
on the same frames; tested to 1e-5), in memory that does not grow with the video length. One latent frame gives 4 frames; the first 3
frames of the video are dropped (the reference's `frames_to_trim`), so T' latents give
4(T' - 1) + 1 frames, the full VAE's count, chunk 0 giving 1 frame and the others 4 (its chunks too).

**Latents.** Our `decode` takes what the full `WanVAE.decode` takes: the DiT's normalized latents
`[B, 16, T', h, w]` ((mu - mean) / std, WAN21_LATENTS_MEAN / STD), and returns `[B, 3, F, 8h, 8w]`
float32 in [-1, 1]. The two releases differ there, and only there (same keys, same shapes):

* `taew2_1` (madebyollin/taehv, fp16) decodes the normalized latents as they are (taehv's README:
  TAEHV uses no latent scale or shift, it decodes what the diffusion model produces);
* `lighttaew2_1` (lightx2v/Autoencoders, fp32, distilled by LightX2V) decodes the raw VAE latents
  `z * std + mean` (LightX2V's `need_scaled`, which it switches on when "lighttae" is in the file name).

We tell them apart by the tensors (`inspect_tiny_vae`), not the name: decoder weights stored in fp32
whose values are not all fp16 numbers were trained in fp32, which is lighttaew2_1; anything else
(fp16/bf16 files, or an fp16 release widened to fp32) is taew2_1. `kind=` overrides this. TAEHV
works in [0, 1] pixels and `[N, T, C, H, W]`; the conversions to our [-1, 1] `[B, C, T, H, W]` are here.

`encode` (the encoder is small, and in the files) follows the reference: frames padded at the end
to a multiple of 4 by repeating the last one; a video of 4k + 1 frames gives k + 1 latents,
returned normalized as `WanVAE.encode` returns them. For lighttaew2_1 we take its encoder to give
the raw latents its decoder takes (LightX2V's round trip, `vid_recon.py`, chains the two with no
scaling); that is not checked on the released weights. The pipeline still encodes an I2V image with
the full VAE, as LightX2V does with its tiny VAE.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

import torch
from torch import nn

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.wan.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, latent_stats

__all__ = ["KINDS", "TinyVAE", "TinyVAEConfig", "TinyVAEFile", "TinyVAEState", "inspect_tiny_vae"]

# taew2_1: decodes the DiT's normalized latents; lighttaew2_1: the raw (un-normalized) VAE latents
KINDS = ("taew2_1", "lighttaew2_1")
LATENT_CHANNELS = 16
ENCODER_WIDTH = 64
DECODER_WIDTHS = (256, 128, 64, 64)      # taehv's n_f: the three stages' widths, then the head's
ENCODER_TIME_DOWN = (True, True, False)  # TPool stride 2, 2, 1: 4 frames per latent
DECODER_TIME_UP = (False, True, True)    # TGrow stride 1, 2, 2: 4 frames per latent
TIME_STRIDE = 4
SPACE_STRIDE = 8


@dataclass(frozen=True)
class TinyVAEConfig:
    """Which release (`kind`, see the module docstring) and whether the file holds the encoder."""

    kind: str = "taew2_1"
    encoder: bool = True
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    z_dim: int = LATENT_CHANNELS

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"tiny VAE kind must be one of {', '.join(KINDS)}, got {self.kind!r}", field="tiny_vae_kind")

    @property
    def raw_latents(self) -> bool:
        """Whether the network works on un-normalized latents (lighttaew2_1)."""
        return self.kind == "lighttaew2_1"


# ---------------------------------------------------------------- blocks (taehv.py's, same parameter names)


def conv3x3(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3) before the decoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """relu(convs(cat(x, past)) + skip(x)); `past`: this block's input one frame earlier. x: [NT, C, H, W]."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(conv3x3(n_in * 2, n_out), nn.ReLU(inplace=True), conv3x3(n_out, n_out),
                                  nn.ReLU(inplace=True), conv3x3(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU(inplace=True)

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


def build_encoder(z_dim: int = LATENT_CHANNELS) -> nn.Sequential:
    """taehv's encoder: conv, relu, then 3 x (TPool, strided conv, 3 MemBlocks), conv to z. Indices 0..17."""
    n = ENCODER_WIDTH
    layers: list[nn.Module] = [conv3x3(3, n), nn.ReLU(inplace=True)]
    for down in ENCODER_TIME_DOWN:
        layers += [TPool(n, 2 if down else 1), conv3x3(n, n, stride=2, bias=False), MemBlock(n, n), MemBlock(n, n),
                   MemBlock(n, n)]
    return nn.Sequential(*layers, conv3x3(n, z_dim))


def build_decoder(z_dim: int = LATENT_CHANNELS) -> nn.Sequential:
    """taehv's decoder: clamp, conv, relu, then 3 x (3 MemBlocks, 2x upsample, TGrow, conv), relu, conv to RGB.
    Indices 0..22."""
    n = DECODER_WIDTHS
    layers: list[nn.Module] = [Clamp(), conv3x3(z_dim, n[0]), nn.ReLU(inplace=True)]
    for i, up in enumerate(DECODER_TIME_UP):
        layers += [MemBlock(n[i], n[i]), MemBlock(n[i], n[i]), MemBlock(n[i], n[i]), nn.Upsample(scale_factor=2),
                   TGrow(n[i], 2 if up else 1), conv3x3(n[i], n[i + 1], bias=False)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True), conv3x3(n[3], 3))


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
    """TAEHV for Wan2.1 (`encoder`, `decoder`: nn.Sequential with taehv.py's indices); see the module
    docstring. `decode` / `decode_chunks` have WanVAE's interface (lightx2v.models.wan.vae_decode)."""

    def __init__(self, config: TinyVAEConfig = TinyVAEConfig()) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config.z_dim) if config.encoder else None
        self.decoder = build_decoder(config.z_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return latent_stats(self.config.latents_mean, self.config.latents_std, like)

    def _check_latents(self, latents: torch.Tensor) -> None:
        z = self.config.z_dim
        if latents.ndim != 5 or latents.shape[1] != z:
            raise InputError(f"tiny VAE decode expects latents [B, {z}, T, h, w], got shape {tuple(latents.shape)}")

    @torch.no_grad()
    def decode_chunks(self, latents: torch.Tensor, state: Optional[TinyVAEState] = None, progress: bool = False,
                      chunk: int = 1) -> Iterator[torch.Tensor]:
        """Normalized latents [B, 16, T', h, w] -> the video's chunks [B, 3, f, 8h, 8w] float32 in [-1, 1],
        `chunk` latent frames at a time (f = 4 * chunk; the first chunk 3 frames fewer), the memory
        carried between chunks in `state` (reset here). `chunk` <= 0: all latent frames at once."""
        from tqdm.auto import tqdm

        self._check_latents(latents)
        z = latents.float()
        if self.config.raw_latents:  # lighttaew2_1 decodes the VAE's own latents: undo the normalisation
            mean, inv_std = self._stats(z)
            z = z / inv_std + mean
        z = z.to(self.dtype)
        b, t = z.shape[0], z.shape[2]
        step = t if chunk <= 0 else chunk
        state = state if state is not None else TinyVAEState()
        state.reset(trim=TIME_STRIDE - 1)
        try:
            for i in tqdm(range(0, t, step), desc="tiny vae decode", unit="chunk", disable=not progress, leave=False):
                y = _from_frames(run_with_memory(self.decoder, _to_frames(z[:, :, i : i + step]), b, state), b)
                if state.trim:  # the decoder's first frames precede the video (taehv's frames_to_trim)
                    drop = min(state.trim, y.shape[2])
                    y, state.trim = y[:, :, drop:], state.trim - drop
                # taehv's pixels are in [0, 1]; ours in [-1, 1] as WanVAE.decode's
                yield y.float().clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)
        finally:
            state.reset()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: Optional[TinyVAEState] = None, progress: bool = False,
               on_chunk: Optional[Callable[[torch.Tensor], None]] = None, chunk: int = 1) -> torch.Tensor:
        """Normalized latents [B, 16, T', h, w] -> video [B, 3, 4(T'-1) + 1, 8h, 8w] float32 in [-1, 1], as
        `WanVAE.decode`; `on_chunk(pixels)` sees each chunk as soon as it is decoded."""
        out = []
        for piece in self.decode_chunks(latents, state, progress, chunk):
            out.append(piece)
            if on_chunk is not None:
                on_chunk(piece)
        return torch.cat(out, dim=2)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, state: Optional[TinyVAEState] = None, chunk: int = 1) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> normalized latents [B, 16, ceil(T / 4), H/8, W/8] float32.

        As the reference: frames padded at the end (the last one repeated) to a multiple of 4; 4 frames
        per latent, `chunk` latents' frames at a time with the memory carried (<= 0: all at once)."""
        if self.encoder is None:
            raise InputError("this tiny VAE file holds no encoder (decoder weights only)")
        if video.ndim != 5 or video.shape[1] != 3:
            raise InputError(f"tiny VAE encode expects a video [B, 3, T, H, W], got shape {tuple(video.shape)}")
        x = video.to(self.dtype).add(1.0).div_(2.0)  # TAEHV encodes pixels in [0, 1]
        if x.shape[2] % TIME_STRIDE:
            pad = TIME_STRIDE - x.shape[2] % TIME_STRIDE
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        b, t = x.shape[0], x.shape[2]
        step = t if chunk <= 0 else chunk * TIME_STRIDE
        state = state if state is not None else TinyVAEState()
        state.reset()
        try:
            out = [_from_frames(run_with_memory(self.encoder, _to_frames(x[:, :, i : i + step]), b, state), b)
                   for i in range(0, t, step)]
        finally:
            state.reset()
        z = torch.cat(out, dim=2).float()
        if self.config.raw_latents:  # lighttaew2_1's latents are the VAE's own: normalise as WanVAE.encode
            mean, inv_std = self._stats(z)
            z = (z - mean) * inv_std
        return z


# ---------------------------------------------------------------- files


@dataclass(frozen=True)
class TinyVAEFile:
    """A tiny VAE file that was checked: its path, its config, and how the kind was decided."""

    path: str
    config: TinyVAEConfig
    reason: str

    @property
    def kind(self) -> str:
        return self.config.kind


def expected_shapes(encoder: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor of a released Wan2.1 TAEHV file with its shape (128 with the encoder, 64 without)."""
    with torch.device("meta"):
        model = TinyVAE(TinyVAEConfig(encoder=encoder))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _wrong_file(path: str, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a Wan2.1 tiny VAE (TAEHV taew2_1 / lighttaew2_1): {why}")


def _hint(sd: Mapping[str, torch.Tensor]) -> str:
    """What a TAEHV file for another latent space looks like, for the error."""
    z = tuple(sd["decoder.1.weight"].shape)[1] if "decoder.1.weight" in sd else None
    other = {48: "taew2_2, for Wan2.2 TI2V-5B", 32: "taehv1_5, for HunyuanVideo 1.5", 128: "taeltx, for LTX-2"}
    return f" ({z} latent channels: {other[z]})" if z in other else ""


def check_tensors(path: str, sd: Mapping[str, torch.Tensor]) -> bool:
    """The file's keys and shapes against the release's (one-line CheckpointError); returns whether it
    holds the encoder (a decoder-only file is accepted)."""
    full = expected_shapes(encoder=True)
    unexpected = sorted(k for k in sd if k not in full)
    if unexpected:
        raise _wrong_file(path, f"unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all)")
    for key, shape in full.items():
        if key in sd and tuple(sd[key].shape) != shape:
            raise _wrong_file(path, f"{key} has shape {tuple(sd[key].shape)}, expected {shape}{_hint(sd)}")
    missing_dec = sorted(k for k in full if k.startswith("decoder.") and k not in sd)
    if missing_dec:
        raise _wrong_file(path, f"no tensor {missing_dec[0]} ({len(missing_dec)} decoder tensors missing)")
    enc = [k for k in full if k.startswith("encoder.")]
    present = [k for k in enc if k in sd]
    if present and len(present) != len(enc):
        missing = sorted(set(enc) - set(present))
        raise _wrong_file(path, f"no tensor {missing[0]} ({len(missing)} encoder tensors missing)")
    return bool(present)


def kind_from_tensors(sd: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """(kind, why) from the decoder's weights: fp32 values that are not all fp16 numbers were trained in
    fp32 (lighttaew2_1, as LightX2V publishes it); fp16/bf16 weights, or fp16 values widened to fp32,
    are taew2_1 (madebyollin publishes fp16)."""
    dec = [v for k, v in sd.items() if k.startswith("decoder.")]
    dtypes = {v.dtype for v in dec}
    if dtypes != {torch.float32}:
        names = "/".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        return "taew2_1", f"{names} weights (taew2_1 is released in fp16, lighttaew2_1 in fp32)"
    for v in dec:
        if not torch.equal(v.to(torch.float16).float(), v):
            return "lighttaew2_1", "fp32 weights trained in fp32 (lighttaew2_1 is released in fp32, taew2_1 in fp16)"
    return "taew2_1", "fp32 weights that are all fp16 numbers: taew2_1's fp16 release widened"


@functools.lru_cache(maxsize=8)
def _inspect(path: str, size: int, mtime_ns: int, kind: Optional[str]) -> TinyVAEFile:
    from lightx2v.loading.state_dict import read_tensors

    sd = read_tensors(path)
    encoder = check_tensors(path, sd)
    if kind is None:
        kind, reason = kind_from_tensors(sd)
    else:
        reason = "given"
    return TinyVAEFile(path=path, config=TinyVAEConfig(kind=kind, encoder=encoder), reason=reason)


def inspect_tiny_vae(path: str | os.PathLike, kind: Optional[str] = None) -> TinyVAEFile:
    """Check a tiny VAE file (.pth or .safetensors) and decide its kind (`kind` given: that one).

    A file that is not a Wan2.1 TAEHV is one CheckpointError naming the first tensor that differs.
    Cached per (path, size, mtime, kind): the component loader and the memory estimate ask again."""
    if kind is not None and kind not in KINDS:
        raise InputError(f"tiny VAE kind must be one of {', '.join(KINDS)}, got {kind!r}", field="tiny_vae_kind")
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"tiny VAE file not found: {p} (expected taew2_1.pth / lighttaew2_1.safetensors ...)")
    st = p.stat()
    return _inspect(str(p.resolve()), st.st_size, st.st_mtime_ns, kind)
