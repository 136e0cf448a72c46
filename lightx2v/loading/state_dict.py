"""Reading checkpoint tensors and putting them into meta-built models.

Design: a model is built on the meta device (no memory), its checkpoint is opened with mmap
(safetensors, or .pth through `torch.load(mmap=True)`), renamed to the model's own (official)
key names, cast, and assigned with `load_state_dict(assign=True)`. No step holds two full copies
of the weights: a tensor is read from the mapped file only when it is cast or moved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from lightx2v.errors import CheckpointError

StateDict = dict[str, torch.Tensor]


def read_tensors(path: str | Path) -> StateDict:
    """All tensors of one .safetensors or .pth/.pt/.bin file, memory-mapped where possible."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))  # mmap-backed: pages are read on first use
        except Exception as exc:  # safetensors raises its own types; name the file
            raise CheckpointError(f"cannot read {path} as safetensors ({exc}); is the file truncated?") from exc
    try:
        obj = _torch_load(path)
    except Exception as exc:
        import pickle

        first = "unpickling failed" if isinstance(exc, pickle.UnpicklingError) else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read {path} as a torch checkpoint ({first}); is the file complete?") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _torch_load(path: Path):
    try:
        return torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # only files in torch's legacy (non-zip) format cannot be mapped
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


def read_sharded(files: Iterable[str | Path]) -> StateDict:
    """Tensors of several files (shards), merged; a key present twice is an error."""
    out: StateDict = {}
    for f in files:
        part = read_tensors(f)
        dup = out.keys() & part.keys()
        if dup:
            raise CheckpointError(f"key {sorted(dup)[0]!r} appears in more than one shard ({f})")
        out.update(part)
    return out


def index_shards(index_file: str | Path, what: str = "") -> list[Path]:
    """The shard files a `*.safetensors.index.json` names (its `weight_map` values), all checked to exist."""
    index_file = Path(index_file)
    try:
        shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"cannot read {index_file} as a safetensors index (JSON with a weight_map)") from None
    missing = [s for s in shards if not (index_file.parent / s).is_file()]
    if missing:
        raise CheckpointError(f"{what + ': ' if what else ''}shard {missing[0]} listed in {index_file.name} "
                              f"is missing from {index_file.parent}")
    return [index_file.parent / s for s in shards]


def rename(sd: Mapping[str, torch.Tensor], fn: Callable[[str], str | None]) -> StateDict:
    """Apply a key-renaming function; keys mapped to None are dropped."""
    out: StateDict = {}
    for k, v in sd.items():
        nk = fn(k)
        if nk is not None:
            out[nk] = v
    return out


def _first(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_into(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    keep_fp32: Iterable[str] = (),
    what: str = "model",
) -> nn.Module:
    """Assign `sd` into a meta-built `model`, casting floating tensors to `dtype`.

    Each tensor is moved and cast in one step (`.to(device, dtype)`), straight from the mapped
    file, so no full second copy of the model is ever held in host memory.

    Parameters whose name contains one of `keep_fp32` stay float32 (modules the model declares
    precision-sensitive). Missing or unexpected keys, or a shape mismatch, raise a
    `CheckpointError` listing the first offenders.
    """
    own = model.state_dict(keep_vars=True)
    missing = own.keys() - sd.keys()
    unexpected = sd.keys() - own.keys()
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_first(unexpected)}")
        raise CheckpointError(f"{what} checkpoint does not match the model: " + "; ".join(parts))
    keep = tuple(keep_fp32)
    cast: StateDict = {}
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{what} checkpoint tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )
        if v.is_floating_point():
            want = torch.float32 if any(p in k for p in keep) else (dtype or v.dtype)
            v = v.to(device=device or v.device, dtype=want)
        elif device is not None:
            v = v.to(device)
        cast[k] = v
    model.load_state_dict(cast, strict=True, assign=True)
    return model
