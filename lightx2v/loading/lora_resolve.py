"""LoRA keys onto our model's tensors: the key grammar, the module-path resolver, PEFT's alphas.

Split from lightx2v.loading.lora (which reads files, builds `LoraWeights` and merges): here is how
one file key `<prefix><module path>.<kind>` finds the tensor of OUR model it targets — official
names as they are, then the family's alias table (lora_alias.py), then the model's diffusers
renamer (`key_from_diffusers`), Kohya's `lora_unet_` underscores resolved against the model's own
module names (never guessed) — and, for diffusers/PEFT files without `.alpha` keys, the scale from
the `lora_adapter_metadata` diffusers writes (lora_alpha, alpha_pattern, use_rslora), as PEFT does.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from torch import nn

from lightx2v.errors import CheckpointError
from lightx2v.loading.lora_alias import Aliases, RowPiece

# `lora_A.<adapter>.weight` is how PEFT names a tensor inside a live model; accepted too
_KEY = re.compile(
    r"(?P<path>.+?)\.(?P<kind>lora_(?:down|up)\.weight|lora_[AB](?:\.[^.]+)?\.(?:weight|bias)|alpha|diff|diff_b|diff_m)"
)
_ADAPTER = re.compile(r"lora_([AB])(?:\.[^.]+)?\.(weight|bias)")
_KINDS = {
    "lora_down.weight": "down", "lora_A.weight": "down", "lora_up.weight": "up", "lora_B.weight": "up",
    "lora_B.bias": "up_bias", "alpha": "alpha", "diff": "diff", "diff_b": "diff_b", "diff_m": "diff_m",
}
_UNSUPPORTED = re.compile(r"\.(hada_|lokr_|dora_scale|lora_mid|lora_magnitude_vector)")
_DOTTED_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")
_UNDERSCORE_PREFIX = "lora_unet_"

Rename = Callable[[str], "str | None"]


def is_quantized(module: nn.Module) -> bool:
    """A layer that stores its weight quantized and can give / take it in float."""
    return callable(getattr(module, "dequantize_weight", None)) and callable(getattr(module, "set_weight", None))


def target_shape(module: nn.Module, attr: str) -> tuple[int, ...]:
    if attr == "weight" and is_quantized(module):
        if hasattr(module, "out_features") and hasattr(module, "in_features"):
            return (int(module.out_features), int(module.in_features))
        return tuple(module.dequantize_weight().shape)
    return tuple(getattr(module, attr).shape)


class _Resolver:
    """Maps a module path of a LoRA file to the name of one of the model's tensors."""

    def __init__(self, model: nn.Module, rename: Rename | None, aliases: Aliases | None = None) -> None:
        self.modules = dict(model.named_modules())
        self.rename = rename
        self.aliases = dict(aliases or {})
        # Kohya writes `blocks_0_cross_attn_k_img`; the model's names, written the same way, say
        # where the dots were. Two names that collide this way resolve to nothing (reported).
        self.flat: dict[str, str | None] = {}
        for name in [*self.modules, *(n for n, _ in model.named_parameters())]:
            u = name.replace(".", "_")
            self.flat[u] = name if self.flat.get(u, name) == name else None
        self.flat_aliases: dict[str, str | None] = {}
        for name in self.aliases:
            u = name.replace(".", "_")
            self.flat_aliases[u] = name if self.flat_aliases.get(u, name) == name else None

    def pieces(self, path: str, underscore: bool) -> tuple[RowPiece, ...] | None:
        """The alias pieces of a file layer the model does not have under that name; None otherwise."""
        if underscore:
            alias = None if self.flat.get(path) else self.flat_aliases.get(path)
        else:
            alias = None if path in self.modules else (path if path in self.aliases else None)
        return self.aliases[alias] if alias else None

    def _tensor(self, module_path: str, attr: str) -> str | None:
        module = self.modules.get(module_path)
        if module is None:
            return None
        direct = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        if direct.get(attr) is None and not (attr == "weight" and is_quantized(module)):
            return None
        return f"{module_path}.{attr}" if module_path else attr

    def resolve(self, path: str, attr: str | None, underscore: bool) -> str | None:
        """Our tensor `attr` of module `path`; attr None: `path` itself names a tensor."""
        if underscore:
            path = self.flat.get(path) or ""
            if not path:
                return None
        candidates = [f"{path}.{attr}" if attr else path]
        if not underscore and self.rename is not None:
            renamed = self.rename(candidates[0])
            if renamed and renamed != candidates[0]:
                candidates.append(renamed)
        for full in candidates:
            parent, _, leaf = full.rpartition(".")
            found = self._tensor(parent, leaf)
            if found:
                return found
        return None

    def shape(self, name: str) -> tuple[int, ...]:
        parent, _, leaf = name.rpartition(".")
        return target_shape(self.modules[parent], leaf)


def _default_rename(model: nn.Module) -> Rename | None:
    """The model's own diffusers -> model-name rename, if it declares one (`key_from_diffusers`)."""
    return getattr(model, "key_from_diffusers", None)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class _PeftAlphas:
    """Scales of a diffusers/PEFT file from its `lora_adapter_metadata` (LoraConfig fields)."""

    alpha: float
    pattern: Mapping[str, float]
    rslora: bool

    def scale(self, module: str, rank: int) -> float:
        alpha = self.alpha
        for pat, value in self.pattern.items():  # PEFT's pattern rule: the key ends the module name
            if module == pat or re.match(rf"(.*\.)?({pat})$", module):
                alpha = float(value)
                break
        return alpha / (math.sqrt(rank) if self.rslora else rank)


def _peft_alphas(path: Path) -> _PeftAlphas | None:
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        meta = {k.removeprefix("transformer."): v for k, v in json.loads(raw).items()}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: lora_adapter_metadata is not valid JSON ({exc})") from exc
    # PEFT's LoraConfig default lora_alpha is 8 when the config does not say
    return _PeftAlphas(float(meta.get("lora_alpha", 8)), dict(meta.get("alpha_pattern") or {}),
                       bool(meta.get("use_rslora", False)))


def _split_key(key: str) -> tuple[str, bool, str] | str:
    """(module path without prefix, underscore style, kind), or the reason the key is not LoRA."""
    m = _KEY.fullmatch(key)
    if m is None:
        if _UNSUPPORTED.search(key):
            return "LoHa / LoKr / DoRA / LoCon-mid tensors are not supported"
        return "not a LoRA tensor (expected .lora_down/.lora_up/.lora_A/.lora_B/.alpha/.diff/.diff_b/.diff_m)"
    path, kind = m["path"], _ADAPTER.sub(r"lora_\1.\2", m["kind"])
    if path.startswith(_UNDERSCORE_PREFIX):
        return path[len(_UNDERSCORE_PREFIX):], True, _KINDS[kind]
    for prefix in _DOTTED_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):], False, _KINDS[kind]
    return path, False, _KINDS[kind]
