"""LoRA module names that are not one-to-one renames of a model's own: row pieces.

Design: most LoRA naming conventions name a layer the model has (official names as they are, diffusers
names through the model's `key_from_diffusers`). Some name a layer that the model splits or fuses
differently, or whose output rows are ordered differently:
  - a file layer is a row block of one of ours (diffusers' HunyuanVideo-1.5 refiner `attn.to_q` is the
    first third of our fused `self_attn_qkv`): its `up` rows land in that block, the rest stay zero, and
    the three file layers on one tensor sum to a block-diagonal low-rank pair;
  - a file layer fuses several of ours (ComfyUI's `img_attn.qkv` over our separate q, k, v): each of ours
    gets the shared `down` and its row slice of `up`;
  - a file layer's rows are ours permuted (diffusers' `norm_out.linear` is (scale, shift), the official
    head (shift, scale)).
A family declares these as an alias table, {file module path: (RowPiece, ...)}, from its DiT format
(`DitFormat.lora_aliases(model)`); the generic reader (lora.py) consults it before the diffusers rename
and names no family. Row ranges are [start, stop) of the output dimension; None: all rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

Rows = Optional[tuple[int, int]]


@dataclass(frozen=True)
class RowPiece:
    """Rows `src` of the file layer's output are rows `dst` of our module `target`'s output."""

    target: str  # our module path, e.g. "txt_in.individual_token_refiner.blocks.0.self_attn_qkv"
    src: Rows = None
    dst: Rows = None


Aliases = Mapping[str, tuple[RowPiece, ...]]


def declared_aliases(model: nn.Module) -> Aliases:
    """The alias table of `model`: its own `lora_aliases()`, or that of the registered DiT format whose
    model class it is (lightx2v.models.registry); {} when none declares one."""
    own = getattr(model, "lora_aliases", None)
    if callable(own):
        return own()
    from lightx2v.models.registry import families

    for fam in families():
        fmt = fam.dit_format
        cls = getattr(fmt, "model_class", None)
        build: Optional[Callable] = getattr(fmt, "lora_aliases", None)
        if cls is not None and type(model) is cls and callable(build):
            return build(model)
    return {}


def _span(rows: Rows, n: int) -> tuple[int, int]:
    return (0, n) if rows is None else rows


def place_rows(t: Tensor, pieces: Sequence[RowPiece], out: int) -> Tensor | str:
    """`t` ([rows, ...]: a LoRA `up`, a weight or bias delta of the file layer) laid into a zero tensor of
    `out` rows by `pieces` (all on one target); or why it does not fit."""
    placed = t.new_zeros((out, *t.shape[1:]))
    for p in pieces:
        s0, s1 = _span(p.src, t.shape[0])
        d0, d1 = _span(p.dst, out)
        if s1 > t.shape[0] or d1 > out or s1 - s0 != d1 - d0:
            return f"gives {t.shape[0]} rows where rows {d0}:{d1} of {out} are expected"
        placed[d0:d1] = t[s0:s1]
    return placed


def covered_rows(pieces: Sequence[RowPiece], rows: int) -> bool:
    """Do the pieces of one file layer read each of its `rows` output rows exactly once?"""
    seen = torch.zeros(rows, dtype=torch.int32)
    for p in pieces:
        s0, s1 = _span(p.src, rows)
        if s1 > rows:
            return False
        seen[s0:s1] += 1
    return bool((seen == 1).all())


def by_target(pieces: Sequence[RowPiece]) -> dict[str, list[RowPiece]]:
    out: dict[str, list[RowPiece]] = {}
    for p in pieces:
        out.setdefault(p.target, []).append(p)
    return out
