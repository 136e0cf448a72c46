"""Which LoRA goes to which DiT: the plan the engine's LoRA steps (merge, dynamic) follow.

A model has one DiT ("dit") or several (`pipeline.transformer_names`; Wan2.2 A14B: "dit", the
high-noise expert, and "dit_2", the low-noise one). A pipeline class may name its DiTs as experts
(`expert_components`, e.g. {"high": "dit", "low": "dit_2"}): the names users give
(`--lora-high`, `lora_low=`, `LoraConfig(per_dit={"low": ...})`). The engine names no family:
it reads the plan.

`LoraConfig.loras` go to every DiT; `LoraConfig.per_dit` to one, keyed by DiT or expert name.
Before any weight is read, `resolve_loras(mc, lora)`:
  - refuses a per-DiT LoRA for a DiT or expert the model does not have (one line naming the field,
    `lora_high`, which the CLI shows as `--lora-high`), and a folder given for one expert;
  - lets the family route the paths of `loras` that say which expert they are for
    (`FamilySpec.lora_experts`: a Wan2.2-Lightning folder, one file per expert; LightX2V's
    `..._low_noise_lora_...` files) into `per_dit`, with a warning saying what was assumed; on a
    model with one DiT nothing is routed, and a LoRA folder is an error;
  - leaves every other file as given, for every DiT.
`lora_entries(lora, dit_names, experts)` then lists each LoRA with the DiTs it goes to.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lightx2v.config import LoraConfig, ModelConfig
from lightx2v.errors import InputError


@dataclass(frozen=True)
class LoraEntry:
    """One LoRA at one strength, and the DiTs it goes to."""

    path: str
    strength: float
    dits: tuple[str, ...]


def present_experts(declared: Mapping[str, str], dit_names: Sequence[str]) -> dict[str, str]:
    """The declared experts (expert name -> DiT name) a model has: only a model of several DiTs,
    holding every DiT the declaration names, has experts (Wan2.2 TI2V-5B, one DiT, has none)."""
    if len(dit_names) < 2 or not all(d in dit_names for d in declared.values()):
        return {}
    return dict(declared)


def experts_of(mc: ModelConfig) -> dict[str, str]:
    """The experts of a detected checkpoint (its pipeline class's `expert_components`)."""
    return present_experts(getattr(mc.spec.pipeline(), "expert_components", {}), mc.dit_names)


def _field(key: str) -> str:
    return f"lora_{key}"


def dit_for(key: str, dit_names: Sequence[str], experts: Mapping[str, str], what: str = "this model") -> str:
    """The DiT a per-DiT key names (a DiT name, or an expert name); one-line InputError otherwise."""
    if key in dit_names:
        return key
    if key in experts:
        return experts[key]
    if experts:
        have = ", ".join(f"{e} ({d})" for e, d in experts.items())
        raise InputError(f"{_field(key)} names no expert of {what}: its experts are {have}", field=_field(key))
    if len(dit_names) == 1:
        raise InputError(f"{_field(key)} names an expert, but {what} has one DiT (no {key!r} expert); "
                         "give the LoRA without an expert", field=_field(key))
    raise InputError(f"{_field(key)} names no DiT of {what}: its DiTs are {', '.join(dit_names)}", field=_field(key))


def lora_entries(lora: LoraConfig, dit_names: Sequence[str], experts: Mapping[str, str],
                 what: str = "this model") -> list[LoraEntry]:
    """Each LoRA of `lora` with the DiTs it goes to (`loras`: all of `dit_names`; `per_dit`: one)."""
    out = [LoraEntry(p, float(s), tuple(dit_names)) for p, s in lora.loras]
    for key, items in lora.per_dit.items():
        dit = dit_for(key, dit_names, experts, what)
        out += [LoraEntry(p, float(s), (dit,)) for p, s in items]
    return out


def for_dit(entries: Sequence[LoraEntry], name: str) -> list[tuple[str, float]]:
    """The (path, strength) pairs of the entries that go to DiT `name`, in order."""
    return [(e.path, e.strength) for e in entries if name in e.dits]


def check_lora_paths(lora: LoraConfig) -> None:
    """Every path exists; a LoRA for one DiT or expert is a file (a folder is routed only from `loras`)."""
    for p, _ in lora.loras:
        if not Path(p).exists():
            raise InputError(f"LoRA file not found: {p}", field="lora")
    for key, items in lora.per_dit.items():
        for p, _ in items:
            if not Path(p).exists():
                raise InputError(f"LoRA file not found: {p}", field=_field(key))
            if Path(p).is_dir():
                raise InputError(f"{_field(key)} takes a LoRA file; {p} is a folder (a folder of one LoRA per "
                                 "expert is given without an expert)", field=_field(key))


def resolve_loras(mc: ModelConfig, lora: LoraConfig) -> LoraConfig:
    """`lora` checked against the detected checkpoint, and the paths that name their expert routed
    to it (see the module docstring). Reads no weight."""
    check_lora_paths(lora)
    experts = experts_of(mc)
    what = f"this {mc.spec.title} {mc.task} model"
    for key in lora.per_dit:
        dit_for(key, mc.dit_names, experts, what)
    route = mc.spec.lora_experts
    general: list[tuple[str, float]] = []
    per_dit = {k: list(v) for k, v in lora.per_dit.items()}
    for path, s in lora.loras:
        p = Path(path)
        found = route(p) if route is not None else None
        if found is None or not experts:
            if p.is_dir():
                why = (f"a folder of one LoRA per expert ({', '.join(f.name for f in found[0].values())}) is for a "
                       f"model with experts; {what} has one DiT" if found is not None else "give a LoRA file")
                raise InputError(f"LoRA {p} is a folder: {why}", field="lora")
            general.append((path, s))
            continue
        files, notice = found
        for expert, file in files.items():
            dit_for(expert, mc.dit_names, experts, what)
            per_dit.setdefault(expert, []).append((str(file), s))
        warnings.warn(notice, UserWarning, stacklevel=3)
    return dataclasses.replace(lora, loras=tuple(general), per_dit=per_dit)
