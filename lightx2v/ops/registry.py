"""What the dispatch points of lightx2v.ops share: a read-only registry of named entries, each with
a capability check `available(device, dtype) -> reason | None`; looking one up by name, and
requiring that it can run here, with one error that says why not and what can
(attention backends in ops/attention.py, fused elementwise ops in ops/fused.py)."""

from __future__ import annotations

from typing import Mapping, TypeVar

import torch

from lightx2v.errors import LightX2VError

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """The entry called `name`, without checking that it can run; `what` names the kind in the error."""
    if name not in registry:
        raise LightX2VError(f"unknown {what} {name!r}; known: auto, {', '.join(registry)}")
    return registry[name]


def require(registry: Mapping[str, T], name: str, device: torch.device, dtype: torch.dtype, what: str) -> T:
    """The entry called `name` if it can run on `device` with `dtype`, else a LightX2VError naming
    why it cannot and the entries that can."""
    entry = lookup(registry, name, what)
    reason = entry.available(device, dtype)
    if reason is not None:
        usable = [n for n, e in registry.items() if e.available(device, dtype) is None]
        raise LightX2VError(f"{what} {name!r} cannot run on {device} with {dtype}: {reason}; "
                            f"usable here: auto, {', '.join(usable)}")
    return entry
