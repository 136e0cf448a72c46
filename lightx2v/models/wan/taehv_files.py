"""Tiny VAE (TAEHV) files: which latent space and which release a file is, told from its tensors.

Design: a family asks for one latent space (lightx2v.models.wan.taehv.SPACES: Wan2.1, Wan2.2 TI2V-5B,
HunyuanVideo-1.5) and `inspect_tiny_vae` answers with a checked `TinyVAEFile` or one line saying
what is wrong and what was expected. The variant comes from the shapes, never the file name:

* latent channels: the input channels of the decoder's first conv (`decoder.1.weight`
  [256, z, 3, 3]), or, for an encoder-only reading, the output channels of the encoder's last conv;
* patch size: from the head's channels (`decoder.22.weight` [3 p^2, 64, 3, 3]) or the encoder's
  first conv (`encoder.0.weight` [64, 3 p^2, 3, 3]).

A file of another released space (taew2_1 given to HunyuanVideo-1.5 ...) names the space it is for;
a file that fits no space is checked against the expected one, tensor by tensor (the first
difference named, with a hint when its latent channels are another TAEHV's). The "super"
releases (a different decoder, `decoder.0` a 1x1 conv) are refused by name.

Which of a space's two releases (madebyollin's or LightX2V's, see the taehv module docstring) is told
from the decoder's weights, as for Wan2.1: fp32 values that are not all fp16 numbers were trained in
fp32 (LightX2V publishes fp32: lighttaew2_1 checked; lighttaew2_2 / lighttaehy1_5 assumed the same);
fp16 / bf16 weights, or fp16 values widened to fp32, are madebyollin's (published in fp16).
`kind=` overrides this (it must be a kind of the expected space).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Mapping, Optional

import torch

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.wan.taehv import SPACES, LatentSpace, TinyVAE, TinyVAEConfig, TinyVAEFile, check_kind

__all__ = ["check_tensors", "expected_shapes", "inspect_tiny_vae", "kind_from_tensors", "space_from_tensors"]

# other TAEHV latent spaces, for the hints of an error (madebyollin/taehv README)
OTHER_SPACES = {128: "taeltx_2 / taeltx2_3, for LTX-2"}


def expected_shapes(space: str = "wan2.1", encoder: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor of a released TAEHV file of `space` with its shape (128 with the encoder, 64 without)."""
    with torch.device("meta"):
        model = TinyVAE(TinyVAEConfig(kind=SPACES[space].kinds[0], encoder=encoder))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _patch(channels: int) -> Optional[int]:
    p = math.isqrt(channels // 3) if channels % 3 == 0 else 0
    return p if p > 0 and 3 * p * p == channels else None


def space_from_tensors(sd: Mapping[str, torch.Tensor]) -> tuple[Optional[LatentSpace], Optional[int], Optional[int]]:
    """(the released space whose latent channels and patch size the tensors have, or None; z; p)."""
    def dim(key: str, axis: int) -> Optional[int]:
        v = sd.get(key)
        return int(v.shape[axis]) if v is not None and v.ndim == 4 else None

    z = dim("decoder.1.weight", 1) or dim("encoder.17.weight", 0)
    head = dim("decoder.22.weight", 0) or dim("encoder.0.weight", 1)
    p = None if head is None else _patch(head)
    found = next((s for s in SPACES.values() if (s.latent_channels, s.patch_size) == (z, p)), None)
    return found, z, p


def _wrong_file(path: str, space: LatentSpace, why: str) -> CheckpointError:
    a, b = space.kinds
    return CheckpointError(f"{path} is not a {space.title} tiny VAE (TAEHV {a} / {b}): {why}")


def _hint(z: Optional[int]) -> str:
    """What a TAEHV file for another latent space with `z` channels is, for the error."""
    other = {s.latent_channels: f"{s.kinds[0]} / {s.kinds[1]}, for {s.title}" for s in SPACES.values()}
    other.update(OTHER_SPACES)
    return f" ({z} latent channels: {other[z]})" if z in other else ""


def check_tensors(path: str, sd: Mapping[str, torch.Tensor], space: str = "wan2.1") -> bool:
    """The file's keys and shapes against the release's of `space` (one-line CheckpointError); returns
    whether it holds the encoder (a decoder-only file is accepted)."""
    want = SPACES[space]
    if "decoder.0.weight" in sd:  # the "super" decoder starts with a 1x1 conv where the others have Clamp
        raise _wrong_file(path, want, "it has the 'super' decoder (taew2_2_super / taehv1_5_super), which lightx2v "
                                      f"does not implement; use {want.kinds[0]} or {want.kinds[1]}")
    found, z, p = space_from_tensors(sd)
    if found is not None and found is not want:
        raise _wrong_file(path, want, f"it is a {found.title} tiny VAE ({found.kinds[0]} / {found.kinds[1]}: "
                                      f"{z} latent channels, patch size {p})")
    full = expected_shapes(space, encoder=True)
    unexpected = sorted(k for k in sd if k not in full)
    if unexpected:
        raise _wrong_file(path, want, f"unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all)")
    for key, shape in full.items():
        if key in sd and tuple(sd[key].shape) != shape:
            hint = _hint(z) if z != want.latent_channels else ""
            raise _wrong_file(path, want, f"{key} has shape {tuple(sd[key].shape)}, expected {shape}{hint}")
    missing_dec = sorted(k for k in full if k.startswith("decoder.") and k not in sd)
    if missing_dec:
        raise _wrong_file(path, want, f"no tensor {missing_dec[0]} ({len(missing_dec)} decoder tensors missing)")
    enc = [k for k in full if k.startswith("encoder.")]
    present = [k for k in enc if k in sd]
    if present and len(present) != len(enc):
        missing = sorted(set(enc) - set(present))
        raise _wrong_file(path, want, f"no tensor {missing[0]} ({len(missing)} encoder tensors missing)")
    return bool(present)


def kind_from_tensors(sd: Mapping[str, torch.Tensor], space: str = "wan2.1") -> tuple[str, str]:
    """(kind, why) from the decoder's weights (the module docstring's rule)."""
    plain, light = SPACES[space].kinds
    dec = [v for k, v in sd.items() if k.startswith("decoder.")]
    dtypes = {v.dtype for v in dec}
    if dtypes != {torch.float32}:
        names = "/".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        return plain, f"{names} weights ({plain} is released in fp16, {light} in fp32)"
    for v in dec:
        if not torch.equal(v.to(torch.float16).float(), v):
            return light, f"fp32 weights trained in fp32 ({light} is released in fp32, {plain} in fp16)"
    return plain, f"fp32 weights that are all fp16 numbers: {plain}'s fp16 release widened"


@functools.lru_cache(maxsize=8)
def _inspect(path: str, size: int, mtime_ns: int, kind: Optional[str], space: str,
             mean: Optional[tuple[float, ...]], std: Optional[tuple[float, ...]]) -> TinyVAEFile:
    from lightx2v.loading.state_dict import read_tensors

    sd = read_tensors(path)
    encoder = check_tensors(path, sd, space)
    if kind is None:
        kind, reason = kind_from_tensors(sd, space)
    else:
        reason = "given"
    config = TinyVAEConfig(kind=kind, encoder=encoder, latents_mean=mean, latents_std=std)
    return TinyVAEFile(path=path, config=config, reason=reason)


def inspect_tiny_vae(path: str | os.PathLike, kind: Optional[str] = None, space: str = "wan2.1",
                     latents_mean: Optional[tuple[float, ...]] = None,
                     latents_std: Optional[tuple[float, ...]] = None) -> TinyVAEFile:
    """Check a tiny VAE file (.pth or .safetensors) for latent space `space` and decide its kind
    (`kind` given: that one, which must be one of the space's); `latents_mean` / `latents_std`: the
    family's map to its VAE's own latents (TinyVAEConfig).

    A file that is not a TAEHV of `space` is one CheckpointError naming what it is, or the first
    tensor that differs. Cached per (path, size, mtime, kind, space, map): the component loader and
    the memory estimate ask again."""
    want = SPACES[space]
    if kind is not None:
        check_kind(kind)
        if kind not in want.kinds:
            theirs = next(s for s in SPACES.values() if kind in s.kinds)
            raise InputError(f"tiny VAE kind {kind} is for {theirs.title} latents; this model's are {want.title}'s: "
                             f"{want.kinds[0]} or {want.kinds[1]}", field="tiny_vae_kind")
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"tiny VAE file not found: {p} (expected {want.kinds[0]}.pth / "
                              f"{want.kinds[1]}.safetensors ...)")
    st = p.stat()
    mean = None if latents_mean is None else tuple(float(v) for v in latents_mean)
    std = None if latents_std is None else tuple(float(v) for v in latents_std)
    return _inspect(str(p.resolve()), st.st_size, st.st_mtime_ns, kind, space, mean, std)
