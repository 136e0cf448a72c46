"""LoRA files: reading every common layout, normalising onto our model's names, merging.

Design: a LoRA file is read once into `LoraWeights`, a normalised set keyed by the names of
OUR model's tensors (official Wan names, e.g. `blocks.0.self_attn.q.weight`): per target tensor
a low-rank pair (`down` [r, in], `up` [out, r], `scale`) and/or a full delta. Every tensor of
the file either lands on a target or is listed in `unmatched` with the reason; nothing is
dropped silently. Merging (`merge_loras_`) and the run-time transform
(`lightx2v.runtime.lora.apply_dynamic_lora`) both consume that set.

A key is `<prefix><module path>.<kind>`:
- prefixes: `diffusion_model.` / `model.diffusion_model.` (official / ComfyUI / LightX2V),
  `transformer.` / `base_model.model.` (diffusers / PEFT), `lora_unet_` (Kohya / musubi-tuner:
  dots written as underscores, resolved against the model's own module names, never guessed),
  or none;
- kinds: `lora_down.weight` / `lora_A.weight` (down), `lora_up.weight` / `lora_B.weight` (up),
  `alpha` (scale = alpha / rank), `lora_B.bias` (PEFT bias delta, scaled like its pair),
  `diff` (full delta of the module's weight, or of the named tensor itself), `diff_b` (bias
  delta), `diff_m` (delta of the module's `modulation`).
Module paths in official names are used as they are; then the family's alias table (lora_alias.py:
file layers that are row blocks of ours, fuse several of ours, or order their rows otherwise); then
the model's diffusers renamer (the `key_from_diffusers` the model declares). For diffusers/PEFT files without `.alpha`
keys, the `lora_adapter_metadata` that diffusers writes (lora_alpha, alpha_pattern, use_rslora)
gives the scale, as PEFT computes it.

Quantized layers expose `dequantize_weight()` and `set_weight(w)`; a merge goes through them.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from lightx2v.errors import CheckpointError, InputError
from lightx2v.loading.lora_alias import RowPiece, by_target, covered_rows, declared_aliases, place_rows
from lightx2v.loading.state_dict import read_tensors
from lightx2v.loading.lora_resolve import (  # the key grammar and resolver (split out for size)
    Rename, _default_rename, _PeftAlphas, _peft_alphas, _Resolver, _split_key, is_quantized, target_shape,
)



def known_widths(family=None) -> dict[int, str]:
    """DiT width -> the released models of that width, as the families declare them (FamilySpec.widths):
    one family's, or every family's (a width two families share names both)."""
    from lightx2v.models.registry import families

    out: dict[int, str] = {}
    for fam in (family,) if family is not None else families():
        for width, title in fam.widths:
            out[width] = title if width not in out or title in out[width] else f"{out[width]} or {title}"
    return out



@dataclass(frozen=True)
class LowRank:
    """delta W = scale * up @ down, reshaped to `shape` (a Conv weight: [out, in, *kernel])."""

    down: Tensor  # [r, in]   (in = prod(shape[1:]))
    up: Tensor  # [out, r]
    scale: float
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self, device: torch.device | None = None) -> Tensor:
        """The full delta in float32, on `device`."""
        d = self.up.to(device, torch.float32) @ self.down.to(device, torch.float32)
        return d.mul_(self.scale).reshape(self.shape)


@dataclass(frozen=True)
class LoraWeights:
    """One LoRA file, normalised onto one model's tensor names (see the module docstring)."""

    source: str
    low_rank: Mapping[str, LowRank]  # our tensor name -> pair
    diffs: Mapping[str, Tensor]  # our tensor name -> full delta, the tensor's shape
    unmatched: Mapping[str, str] = field(default_factory=dict)  # file key -> why it targets nothing
    target: str = "this model"  # what it was normalised onto, for messages ("the low-noise expert (dit_2)")

    @property
    def targets(self) -> frozenset[str]:
        return frozenset(self.low_rank) | frozenset(self.diffs)

    def delta(self, name: str, device: torch.device | None = None) -> Tensor:
        """Total float32 delta of one target (unit strength)."""
        out = self.low_rank[name].delta(device) if name in self.low_rank else None
        if name in self.diffs:
            d = self.diffs[name].to(device, torch.float32)
            out = d.clone() if out is None else out.add_(d.reshape(out.shape))
        return out


# ---------------------------------------------------------------- model side


def _pair(
    group: dict[str, tuple[str, Tensor]], shape: tuple[int, ...], alphas: _PeftAlphas | None, path: str
) -> LowRank | str:
    """The normalised pair of one module, or why its shapes do not fit `shape`."""
    (_, down), (_, up) = group["down"], group["up"]
    if down.ndim < 2 or up.ndim < 2 or up.shape[1] != down.shape[0] or any(s != 1 for s in up.shape[2:]):
        return f"lora pair of shapes down {tuple(down.shape)} / up {tuple(up.shape)} is not a low-rank pair"
    rank = down.shape[0]
    d2, u2 = down.reshape(rank, -1), up.reshape(up.shape[0], rank)
    fits = u2.shape[0] == shape[0] and d2.shape[1] == math.prod(shape[1:])
    if down.ndim > 2 and tuple(down.shape[1:]) != tuple(shape[1:]):
        fits = False
    if not fits:
        return f"gives [{u2.shape[0]}, {d2.shape[1]}]"
    if "alpha" in group:
        scale = float(group["alpha"][1].float().item()) / rank
    elif alphas is not None:
        scale = alphas.scale(path, rank)
    else:
        scale = 1.0
    return LowRank(d2, u2, scale, tuple(shape))


def _fit_diff(t: Tensor, shape: tuple[int, ...]) -> Tensor | None:
    if tuple(t.shape) == shape:
        return t
    # [1, 6, C] modulation deltas are sometimes stored squeezed, and the other way round
    squeeze = lambda s: tuple(d for d in s if d != 1)  # noqa: E731
    return t.reshape(shape) if squeeze(t.shape) == squeeze(shape) else None


_DIFF_ATTR = {"diff": "weight", "diff_b": "bias", "up_bias": "bias", "diff_m": "modulation"}


class _Builder:
    """Collects the targets of one file; shape mismatches are kept for one error at the end."""

    def __init__(self, resolver: _Resolver, alphas: _PeftAlphas | None) -> None:
        self.resolver, self.alphas = resolver, alphas
        self.low_rank: dict[str, LowRank] = {}
        self.diffs: dict[str, Tensor] = {}
        self.unmatched: dict[str, str] = {}
        self.mismatched: list[tuple[str, str, tuple[int, ...]]] = []  # (key, what the file gives, model shape)

    def add_group(self, path: str, underscore: bool, group: dict[str, tuple[str, Tensor]]) -> None:
        has_pair = "down" in group and "up" in group
        if not has_pair:
            for kind in ("down", "up", "alpha"):
                if kind in group:
                    self.unmatched[group[kind][0]] = "lora_down/lora_A and lora_up/lora_B must come as a pair"
        pieces = self.resolver.pieces(path, underscore)
        if pieces is not None:
            self._add_pieces(path, group, pieces, has_pair)
            return
        pair_scale = 1.0
        if has_pair:
            name = self.resolver.resolve(path, "weight", underscore)
            key = group["down"][0]
            if name is None:
                for kind in ("down", "up", "alpha"):
                    if kind in group:
                        self.unmatched[group[kind][0]] = f"no weight {path!r} in this model"
            else:
                pair = _pair(group, self.resolver.shape(name), self.alphas, path)
                if isinstance(pair, str):
                    self.mismatched.append((key, pair, self.resolver.shape(name)))
                else:
                    self._add_low_rank(name, pair)
                    pair_scale = pair.scale
        for kind in ("diff", "diff_b", "up_bias", "diff_m"):
            if kind in group:
                self._add_diff(path, underscore, kind, *group[kind], scale=pair_scale if kind == "up_bias" else 1.0)

    def _add_low_rank(self, name: str, pair: LowRank) -> None:
        """A second pair on one tensor (three file layers on one fused tensor) joins the first along the
        rank, each scale folded into its `up`: the sum of both deltas (block-diagonal for row blocks)."""
        old = self.low_rank.get(name)
        if old is None:
            self.low_rank[name] = pair
            return
        down = torch.cat([old.down.float(), pair.down.float()])
        up = torch.cat([old.up.float() * old.scale, pair.up.float() * pair.scale], dim=1)
        self.low_rank[name] = LowRank(down, up, 1.0, old.shape)

    def _add_pieces(self, path: str, group: dict[str, tuple[str, Tensor]], pieces: tuple[RowPiece, ...],
                    has_pair: bool) -> None:
        """A file layer of the family's alias table: each target gets its rows (lora_alias.py)."""
        targets = by_target(pieces)
        pair_scale = 1.0
        if has_pair:
            (key, down), (_, up) = group["down"], group["up"]
            if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
                self.mismatched.append((key, f"down {tuple(down.shape)} / up {tuple(up.shape)} is no low-rank pair",
                                        tuple(up.shape)))
                return
            rank = down.shape[0]
            if "alpha" in group:
                pair_scale = float(group["alpha"][1].float().item()) / rank
            elif self.alphas is not None:
                pair_scale = self.alphas.scale(path, rank)
            for target, ps in targets.items():
                name = self._piece_target(group, target, "weight", ("down", "up", "alpha"))
                if name is None:
                    continue
                shape = self.resolver.shape(name)
                up_t = place_rows(up, ps, shape[0]) if covered_rows(pieces, up.shape[0]) else "does not cover its rows"
                if isinstance(up_t, str) or down.shape[1] != math.prod(shape[1:]):
                    gives = up_t if isinstance(up_t, str) else f"gives [{up.shape[0]}, {down.shape[1]}]"
                    self.mismatched.append((key, gives, shape))
                    continue
                self._add_low_rank(name, LowRank(down, up_t, pair_scale, tuple(shape)))
        for kind in ("diff", "diff_b", "up_bias", "diff_m"):
            if kind not in group:
                continue
            key, t = group[kind]
            if kind == "diff_m":
                self.unmatched[key] = f"no modulation for {path!r} in this model"
                continue
            for target, ps in targets.items():
                name = self._piece_target(group, target, _DIFF_ATTR[kind], (kind,))
                if name is None:
                    continue
                shape = self.resolver.shape(name)
                placed = place_rows(t, ps, shape[0])
                if isinstance(placed, str) or tuple(placed.shape) != tuple(shape):
                    self.mismatched.append((key, placed if isinstance(placed, str) else f"gives {list(t.shape)}", shape))
                    continue
                placed = placed * pair_scale if kind == "up_bias" else placed
                self.diffs[name] = placed + self.diffs[name] if name in self.diffs else placed

    def _piece_target(self, group: dict, target: str, attr: str, kinds: tuple[str, ...]) -> str | None:
        name = self.resolver.resolve(target, attr, False)
        if name is None:
            for kind in kinds:
                if kind in group:
                    self.unmatched[group[kind][0]] = f"no {attr} {target!r} in this model"
        return name

    def _add_diff(self, path: str, underscore: bool, kind: str, key: str, t: Tensor, scale: float) -> None:
        name = self.resolver.resolve(path, _DIFF_ATTR[kind], underscore)
        if name is None and kind == "diff":  # `<tensor>.diff`: a delta of a named tensor, e.g. a modulation
            name = self.resolver.resolve(path, None, underscore)
        if name is None:
            self.unmatched[key] = f"no {_DIFF_ATTR[kind]} for {path!r} in this model"
            return
        shape = self.resolver.shape(name)
        fitted = _fit_diff(t, shape)
        if fitted is None:
            self.mismatched.append((key, f"gives {list(t.shape)}", shape))
            return
        fitted = fitted * scale if scale != 1.0 else fitted
        self.diffs[name] = fitted + self.diffs[name] if name in self.diffs else fitted


def _groups(sd: Mapping[str, Tensor], unmatched: dict[str, str]) -> dict[tuple[str, bool], dict]:
    groups: dict[tuple[str, bool], dict[str, tuple[str, Tensor]]] = {}
    for key, t in sd.items():
        split = _split_key(key)
        if isinstance(split, str):
            unmatched[key] = split
            continue
        path, underscore, kind = split
        group = groups.setdefault((path, underscore), {})
        if kind in group:
            raise CheckpointError(f"LoRA keys {group[kind][0]!r} and {key!r} are the same tensor of one module")
        group[kind] = (key, t)
    return groups


def load_lora(path: str | Path, model: nn.Module, *, rename: Rename | None = None, target: str = "this model",
              allow_empty: bool = False) -> LoraWeights:
    """Read a LoRA file (.safetensors, or a torch state dict) and normalise it onto `model`.

    `rename` maps a diffusers-layout tensor name to the model's own (default: the Wan DiT's
    `dit_key_from_diffusers` for a `WanModel`). `target` names the model in messages (one expert
    of several: "the low-noise expert (dit_2)"). Raises `CheckpointError` for an unreadable file,
    a file none of whose tensors targets the model (unless `allow_empty`: then every tensor is
    listed in `unmatched`, which merging and `set` report as a warning under allow_unmatched), or
    one whose shapes do not fit it (a LoRA for another model size): the message says what model
    the LoRA looks made for.
    """
    path = Path(path)
    sd = read_tensors(path)
    builder = _Builder(_Resolver(model, rename or _default_rename(model), declared_aliases(model)), _peft_alphas(path))
    for (mod_path, underscore), group in _groups(sd, builder.unmatched).items():
        builder.add_group(mod_path, underscore, group)
    if builder.mismatched:
        raise CheckpointError(_mismatch_message(path, builder.mismatched, sd, model, target))
    if not builder.low_rank and not builder.diffs and not allow_empty:
        first = ", ".join(sorted(sd)[:3]) or "no tensors"
        raise CheckpointError(f"no tensor of LoRA {path.name} targets {target} (keys: {first}, ...); "
                              f"is it a LoRA for another model?")
    return LoraWeights(str(path), builder.low_rank, builder.diffs, builder.unmatched, target)


def _mismatch_message(path: Path, mismatched: list, sd: Mapping[str, Tensor], model: nn.Module,
                      target: str = "this model") -> str:
    key, gives, shape = mismatched[0]
    more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
    return (f"LoRA {path.name} does not fit {target}: {key} {gives}, the model's tensor is "
            f"{list(shape)}{more}. {_looks_like(sd, model)}")


def _looks_like(sd: Mapping[str, Tensor], model: nn.Module) -> str:
    """What Wan DiT the LoRA's shapes point to, next to this model's width and depth."""
    widths: Counter[int] = Counter()
    blocks = set()
    for key, t in sd.items():
        m = re.search(r"blocks[._](\d+)[._](self_attn|attn1)[._](q|to_q)\b", key)
        if m and t.ndim >= 2:
            widths[t.shape[0] if re.search(r"lora_(up|B)|diff$", key) else t.shape[-1]] += 1
        b = re.search(r"blocks[._](\d+)[._]", key)
        if b:
            blocks.add(int(b[1]))
    own = [p.shape[0] for n, p in model.named_parameters() if n.endswith("self_attn.q.weight")]
    mine = f"this model has width {own[0]} and {len(own)} blocks" if own else ""
    if not widths:
        return (mine + ".") if mine else ""
    width = widths.most_common(1)[0][0]
    known = known_widths().get(width)
    return f"It looks like a LoRA for a DiT of width {width}{f' ({known})' if known else ''} with {len(blocks)} blocks; {mine}."


# ---------------------------------------------------------------- merging


def report_unmatched(loras: Sequence[tuple[LoraWeights, float]], allow_unmatched: bool) -> list[str]:
    """Raise (or, with allow_unmatched, warn) about the keys of `loras` that target nothing."""
    parts, keys = [], []
    for lw, _ in loras:
        if not lw.unmatched:
            continue
        items = sorted(lw.unmatched.items())
        keys += [k for k, _ in items]
        shown = ", ".join(f"{k} ({why})" for k, why in items[:4])
        more = f" (+{len(items) - 4} more)" if len(items) > 4 else ""
        parts.append(f"{len(items)} tensor(s) of {Path(lw.source).name} target nothing in {lw.target}: {shown}{more}")
    if parts and not allow_unmatched:
        raise CheckpointError("; ".join(parts) + "; pass allow_unmatched=True to apply the rest")
    if parts:
        warnings.warn("LoRA tensors skipped: " + "; ".join(parts), UserWarning, stacklevel=3)
    return keys


def resolve_target(model: nn.Module, name: str, shape: tuple[int, ...]) -> tuple[nn.Module, str]:
    """(module, attribute) of a target, checked against the shape the LoRA was normalised for."""
    parent, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(parent)
    except AttributeError as exc:
        raise CheckpointError(f"LoRA target {name} is not in this model (was the LoRA loaded for another?)") from exc
    if not (hasattr(module, attr) or (attr == "weight" and is_quantized(module))):
        raise CheckpointError(f"LoRA target {name} is not in this model (was the LoRA loaded for another?)")
    if target_shape(module, attr) != tuple(shape):
        raise CheckpointError(f"LoRA target {name} has shape {list(target_shape(module, attr))} here, "
                              f"the LoRA was loaded for {list(shape)}")
    return module, attr


def target_shapes(lw: LoraWeights) -> dict[str, tuple[int, ...]]:
    return {**{n: tuple(d.shape) for n, d in lw.diffs.items()}, **{n: p.shape for n, p in lw.low_rank.items()}}


@torch.no_grad()
def merge_loras_(
    model: nn.Module, loras: Sequence[tuple[LoraWeights, float]], *, allow_unmatched: bool = False
) -> dict:
    """Add `strength * delta` of each LoRA into the model's tensors, in place.

    Each target is summed in float32 over all LoRAs and cast back to its dtype once; a quantized
    layer is dequantized, merged and requantized through `dequantize_weight` / `set_weight`.
    Keys that target nothing raise a `CheckpointError` listing them (before anything is
    changed), or with `allow_unmatched=True` a warning. Returns a report:
    {"merged": [tensor names], "unmatched": [file keys], "loras": [(source, strength)]}.
    """
    loras = [(lw, lora_strength(s)) for lw, s in loras]
    unmatched = report_unmatched(loras, allow_unmatched)
    shapes: dict[str, tuple[int, ...]] = {}
    for lw, _ in loras:
        shapes |= target_shapes(lw)
    places = {name: resolve_target(model, name, shape) for name, shape in sorted(shapes.items())}
    for name, (module, attr) in places.items():
        quantized = attr == "weight" and is_quantized(module)
        base = module.dequantize_weight() if quantized else getattr(module, attr)
        acc = base.detach().to(torch.float32, copy=True)
        for lw, strength in loras:
            if name in lw.targets:
                acc.add_(lw.delta(name, acc.device), alpha=strength)
        if quantized:
            module.set_weight(acc)
        else:
            base.copy_(acc)  # back to the tensor's own dtype, rounded once
    return {"merged": list(places), "unmatched": unmatched, "loras": [(lw.source, s) for lw, s in loras]}


# |strength| above this is no blend of the LoRA (1.0 is it as trained) but an overflow waiting to happen
LORA_STRENGTH_MAX = 10.0


def lora_strength(value, what: str = "LoRA strength") -> float:
    """A LoRA strength as a float: a finite number with |s| <= LORA_STRENGTH_MAX; one-line InputError otherwise."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be a number, got {value!r}")
    try:
        s = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{what} must be a number, as in lora.safetensors:0.8, got {value!r}") from None
    if not math.isfinite(s) or abs(s) > LORA_STRENGTH_MAX:
        raise InputError(f"{what} must be a finite number from -{LORA_STRENGTH_MAX:g} to {LORA_STRENGTH_MAX:g} "
                         f"(1.0: the LoRA as trained), got {value!r}")
    return s


def parse_lora_spec(spec: str) -> tuple[Path, float]:
    """'FILE' or 'FILE:STRENGTH' (strength 1.0 by default) -> (path, strength); one-line errors."""
    path, sep, tail = spec.rpartition(":")
    if sep and path and not tail.startswith(("/", "\\")):
        return Path(path), lora_strength(tail, f"LoRA spec {spec!r}: the strength after ':'")
    return Path(spec), 1.0
