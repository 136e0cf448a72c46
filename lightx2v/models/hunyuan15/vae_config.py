"""The HunyuanVideo-1.5 VAE's config: `HunyuanVideo15VAEConfig`, from either vae/config.json or the tensors.

Design: one frozen dataclass in the official field names (tencent/HunyuanVideo-1.5 vae/config.json of
`AutoencoderKLConv3D`), defaults = the released VAE: 32 latent channels, widths 128-256-512-1024-1024,
2 residual blocks a level, 16x spatial and 4x temporal compression, scaling_factor 1.03682, no shift.
`from_official` and `from_diffusers` (diffusers' `AutoencoderKLHunyuanVideo15`) honour every field the
file states or refuse it by name; a field the file omits keeps the released default (both classes
default to the release). `config_from_state_dict` reads the architecture off official-keys tensors
(for a bare .safetensors file with no config).

`sample_size` / `sample_tsize` are the reference's tile sizes (its spatial tiling tile, in pixels;
its temporal tiling, which the reference itself refuses to run). They are recorded; our tiling is
set with `HunyuanVideo15VAE.set_tiling`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from lightx2v.errors import CheckpointError

__all__ = ["HunyuanVideo15VAEConfig", "config_from_state_dict", "tiny_vae_config"]

RGB = 3


def _log2(n: int) -> int | None:
    return n.bit_length() - 1 if n > 0 and n & (n - 1) == 0 else None


@dataclass(frozen=True)
class HunyuanVideo15VAEConfig:
    in_channels: int = RGB
    out_channels: int = RGB
    latent_channels: int = 32
    block_out_channels: tuple[int, ...] = (128, 256, 512, 1024, 1024)
    layers_per_block: int = 2
    ffactor_spatial: int = 16
    ffactor_temporal: int = 4
    downsample_match_channel: bool = True
    upsample_match_channel: bool = True
    scaling_factor: float = 1.03682
    shift_factor: float | None = None
    sample_size: int = 256
    sample_tsize: int = 64

    def __post_init__(self) -> None:
        n, s, t = len(self.block_out_channels), _log2(self.ffactor_spatial), _log2(self.ffactor_temporal)
        if s is None or t is None or t > s:
            raise CheckpointError(f"VAE config: ffactor_spatial {self.ffactor_spatial} and ffactor_temporal "
                                  f"{self.ffactor_temporal} must be powers of 2, the temporal one at most the spatial one")
        if s > n - 1:
            raise CheckpointError(f"VAE config: ffactor_spatial {self.ffactor_spatial} needs {s} resampling levels, "
                                  f"block_out_channels {list(self.block_out_channels)} gives {n - 1}")
        if min(self.block_out_channels, default=0) < 1 or self.layers_per_block < 1 or self.latent_channels < 1:
            raise CheckpointError("VAE config: block_out_channels, layers_per_block and latent_channels must be positive")
        if self.block_out_channels[-1] % (2 * self.latent_channels) or self.block_out_channels[-1] % self.latent_channels:
            raise CheckpointError(f"VAE config: block_out_channels[-1] {self.block_out_channels[-1]} must be a multiple "
                                  f"of 2 * latent_channels = {2 * self.latent_channels} (the parameter-free shortcuts)")
        for i, (c_in, c_out, temporal) in enumerate(self.down_stages()):
            factor = 8 if temporal else 4
            if c_out % factor or (factor * c_in) % c_out or (temporal and (factor * c_in // c_out) % 2):
                raise CheckpointError(f"VAE config: encoder level {i} ({c_in} -> {c_out} channels) does not fit the "
                                      "resampler's parameter-free shortcut; check block_out_channels")
        for i, (c_in, c_out, temporal) in enumerate(self.up_stages()):
            factor = 8 if temporal else 4
            if (factor * c_out) % c_in or (temporal and (factor * c_out // c_in) % 2):
                raise CheckpointError(f"VAE config: decoder level {i} ({c_in} -> {c_out} channels) does not fit the "
                                      "resampler's parameter-free shortcut; check block_out_channels")

    def down_stages(self) -> list[tuple[int, int, bool]]:
        """(width in, width out, halves time) of each encoder level that downsamples (the first
        log2(ffactor_spatial) levels; the last log2(ffactor_temporal) of those halve time too)."""
        s, t, ch = _log2(self.ffactor_spatial), _log2(self.ffactor_temporal), self.block_out_channels
        return [(ch[i], ch[i + 1] if self.downsample_match_channel else ch[i], i >= s - t) for i in range(s)]

    def up_stages(self) -> list[tuple[int, int, bool]]:
        """(width in, width out, doubles time) of each decoder level that upsamples (the first
        log2(ffactor_spatial); the first log2(ffactor_temporal) double time too)."""
        s, t, ch = _log2(self.ffactor_spatial), _log2(self.ffactor_temporal), self.block_out_channels[::-1]
        return [(ch[i], ch[i + 1] if self.upsample_match_channel else ch[i], i < t) for i in range(s)]

    # ---- the files

    @classmethod
    def from_official(cls, cfg: Mapping[str, Any]) -> "HunyuanVideo15VAEConfig":
        """From the official vae/config.json (`AutoencoderKLConv3D`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return _read(cls, cfg, {k: k for k in names}, "AutoencoderKLConv3D", "official VAE config.json")

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "HunyuanVideo15VAEConfig":
        """From a diffusers vae/config.json (`AutoencoderKLHunyuanVideo15`): the same fields, the two
        compression ratios renamed; it has no shift (the diffusers pipelines apply none)."""
        fields = dict(_DIFFUSERS_FIELDS)
        return _read(cls, cfg, fields, "AutoencoderKLHunyuanVideo15", "diffusers VAE config.json")

    def to_diffusers(self) -> dict[str, Any]:
        """The arguments of diffusers' AutoencoderKLHunyuanVideo15 for this architecture (tests, convert).
        A shift is refused: diffusers' class and pipelines have none."""
        if self.shift_factor:
            raise CheckpointError(f"VAE shift_factor {self.shift_factor} has no diffusers equivalent")
        return {d: (list(v) if isinstance(v := getattr(self, o), tuple) else v)
                for d, o in _DIFFUSERS_FIELDS if o not in ("sample_size", "sample_tsize", "shift_factor")}


# diffusers' field -> ours (every argument of AutoencoderKLHunyuanVideo15, diffusers 0.36 - 0.42)
_DIFFUSERS_FIELDS = (
    ("in_channels", "in_channels"), ("out_channels", "out_channels"), ("latent_channels", "latent_channels"),
    ("block_out_channels", "block_out_channels"), ("layers_per_block", "layers_per_block"),
    ("spatial_compression_ratio", "ffactor_spatial"), ("temporal_compression_ratio", "ffactor_temporal"),
    ("downsample_match_channel", "downsample_match_channel"), ("upsample_match_channel", "upsample_match_channel"),
    ("scaling_factor", "scaling_factor"),
)


def _read(cls, cfg: Mapping[str, Any], fields: Mapping[str, str], class_name: str, where: str):
    """`cls` from `cfg`, with `fields` (the file's name -> ours); '_' keys are metadata, but a
    `_class_name` must be `class_name`."""
    stated = cfg.get("_class_name")
    if stated is not None and stated != class_name:
        raise CheckpointError(f"{where}: _class_name {stated!r} is not the HunyuanVideo-1.5 VAE; expected {class_name!r}")
    unknown = [k for k in cfg if not k.startswith("_") and k not in fields]
    if unknown:
        raise CheckpointError(f"{where}: unknown field {unknown[0]!r}; supported: {', '.join(fields)} and '_' metadata")
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    kw: dict[str, Any] = {}
    try:
        for name, value in cfg.items():
            if name.startswith("_"):
                continue
            ours = fields[name]
            kind = kinds[ours]
            if ours == "block_out_channels":
                kw[ours] = tuple(int(v) for v in value)
            elif ours == "shift_factor":
                kw[ours] = None if value is None else float(value)
            elif kind == "bool":
                if not isinstance(value, bool):
                    raise TypeError(f"{name} must be true or false, got {value!r}")
                kw[ours] = value
            else:
                kw[ours] = float(value) if kind == "float" else int(value)
        out = cls(**kw)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has a malformed value ({exc})") from None
    if out.in_channels != RGB or out.out_channels != RGB:
        raise CheckpointError(f"{where}: in_channels {out.in_channels} / out_channels {out.out_channels}; "
                              "the video VAE takes and gives RGB (3)")
    return out


def config_from_state_dict(sd: Mapping[str, torch.Tensor], what: str = "HunyuanVideo-1.5 VAE",
                           **given: Any) -> HunyuanVideo15VAEConfig:
    """The architecture of an official-keys VAE state dict (widths, levels, latent channels, blocks per
    level, compression from which levels resample); `given` fields (scaling_factor ...) win."""

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"{what} has no tensor {key!r}; is it a HunyuanVideo-1.5 VAE (official keys)?")
        return sd[key]

    latent = need("decoder.conv_in.conv.weight").shape[1]
    n_res = 0
    while f"encoder.down.0.block.{n_res}.conv2.conv.weight" in sd:
        n_res += 1
    widths: list[int] = []
    while (w := sd.get(f"encoder.down.{len(widths)}.block.{max(n_res - 1, 0)}.conv2.conv.weight")) is not None:
        widths.append(w.shape[0])
    if n_res == 0 or len(widths) < 2:
        raise CheckpointError(f"{what}: cannot read the encoder's levels from the tensors; is it a HunyuanVideo-1.5 VAE?")
    spatial = temporal = 0
    down_match = up_match = True
    for i in range(len(widths) - 1):
        conv = sd.get(f"encoder.down.{i}.downsample.conv.conv.weight")
        if conv is None:
            continue
        # the resampler gives the next level's input width; its conv 1/8 of that if it halves time too
        c_out = need(f"encoder.down.{i + 1}.block.0.conv1.conv.weight").shape[1]
        spatial, temporal = spatial + 1, temporal + (c_out == 8 * conv.shape[0])
        down_match &= c_out == widths[i + 1]
        up_in = sd.get(f"decoder.up.{i + 1}.block.0.conv1.conv.weight")
        up_match &= up_in is not None and up_in.shape[1] == widths[::-1][i + 1]
    arch = dict(latent_channels=latent, block_out_channels=tuple(widths), layers_per_block=n_res,
                ffactor_spatial=2**spatial, ffactor_temporal=2**temporal, downsample_match_channel=down_match,
                upsample_match_channel=up_match)
    try:
        return HunyuanVideo15VAEConfig(**{**arch, **given})
    except CheckpointError as exc:
        raise CheckpointError(f"{what}: {exc}") from None


def tiny_vae_config(**over: Any) -> HunyuanVideo15VAEConfig:
    """A small VAE of the released structure (five levels, 16x / 4x, 32 latent channels) for tests."""
    return HunyuanVideo15VAEConfig(**{"block_out_channels": (4, 8, 16, 32, 64), "layers_per_block": 1, **over})
