"""What a LoRA file holds, for `lightx2v info FILE`: read from its header, no weight loaded.

Keys are split by the rules `lightx2v.loading.lora` loads with (`_split_key`: prefix, module path,
kind), so `info` reports what loading will see: the key convention (`lora_A`/`lora_B` of diffusers
and PEFT; `lora_down`/`lora_up` + `alpha` of kohya, musubi-tuner, ComfyUI and LightX2V; full deltas
`diff`/`diff_b`/`diff_m`), the prefix (`diffusion_model.` ComfyUI/official, `transformer.` diffusers,
`base_model.model.` PEFT, `lora_unet_` kohya with underscores), ranks, alphas (the `alpha` tensors,
the few bytes read, or diffusers' `lora_adapter_metadata`), the widths of the targeted layers, and
which blocks and modules it targets, in the model's own (official) names: a registered family's
DiT format recognises the names and renames diffusers ones. The model it fits is read off the
most common layer width (lora.py's table of known widths: Wan 1.3B is 1536, 14B 5120).

Kohya names (`lora_unet_blocks_0_cross_attn_k_img`) lose their dots; lora.py resolves them against
a model's module names, which `info` has not got, so inside a block the first two words are shown as
the module and the rest as the layer (`cross_attn k_img`), and other names as written.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightx2v.loading.lora import _peft_alphas, _split_key, known_widths

_PAIR_KINDS = ("down", "up")
_PREFIXES = {  # the prefix a key starts with -> who writes it
    "model.diffusion_model.": "ComfyUI", "diffusion_model.": "ComfyUI / official Wan names",
    "transformer.": "diffusers", "base_model.model.": "PEFT", "lora_unet_": "kohya / musubi-tuner, dots written as underscores",
}
_BLOCK = re.compile(r"(?P<stack>(?:.*[._])?blocks)[._](?P<i>\d+)(?:[._](?P<rest>.+))?$")
# display order only: attention layers, then modules, in their usual order; the rest alphabetically
_FIRST = {"q": 0, "k": 1, "v": 2, "o": 3}
_PARENTS = {"self_attn": 0, "attn1": 0, "cross_attn": 1, "attn2": 1, "ffn": 2}


@dataclass(frozen=True)
class LoraInfo:
    """A LoRA file described (see the module docstring)."""

    path: Path
    convention: str                      # "lora_A/lora_B (diffusers / PEFT)" ...
    prefix: str                          # "" when none
    names: str                           # "official", "diffusers", or "unknown" (no family recognised them)
    family: str | None                   # the registered family whose DiT names the keys match
    ranks: dict[int, int]                # rank -> pairs
    alpha: str                           # where the scale comes from, and its values
    widths: dict[int, int]               # in / out width of the targeted layers -> count
    width: int | None                    # the most common: the model's hidden size
    fits: str                            # "Wan2.1 1.3B (dim 1536)", or what can be said
    blocks: tuple[int, ...]              # targeted block indices
    targets: tuple[str, ...]             # "blocks 0-39: self_attn q,k,v,o; ffn 0,2", "also: head.head"
    kinds: dict[str, int]                # "pairs", "diff", "diff_b", "diff_m", "bias" -> count
    tensors: int
    dtypes: dict[str, int]
    not_lora: tuple[str, ...] = field(default=())  # keys that are no LoRA tensor (loading reports them)

    def describe(self) -> str:
        lines = [f"{self.path}", f"  LoRA     {self.fits}"]
        prefix = f", prefix {self.prefix!r} ({_PREFIXES.get(self.prefix, '')})" if self.prefix else ""
        lines.append(f"  keys     {self.convention}{prefix}; {self.names} module names")
        if self.ranks:
            ranks = ", ".join(f"{r} (x{n})" for r, n in sorted(self.ranks.items()))
            lines.append(f"  rank     {ranks}; alpha: {self.alpha}")
        widths = ", ".join(f"{w} (x{n})" for w, n in sorted(self.widths.items(), key=lambda x: -x[1]))
        lines.append(f"  widths   {widths or 'none'}")
        lines += [f"  targets  {t}" if i == 0 else f"           {t}" for i, t in enumerate(self.targets)]
        kinds = ", ".join(f"{k} {n}" for k, n in self.kinds.items())
        dtypes = ", ".join(f"{d} x{n}" for d, n in self.dtypes.items())
        lines.append(f"  tensors  {self.tensors} ({dtypes}); {kinds}")
        if self.not_lora:
            lines.append(f"  not LoRA tensors: {len(self.not_lora)}, e.g. {', '.join(self.not_lora[:3])}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": "lora", "convention": self.convention, "prefix": self.prefix,
                "names": self.names, "family": self.family, "ranks": self.ranks, "alpha": self.alpha,
                "widths": self.widths, "width": self.width, "fits": self.fits, "blocks": list(self.blocks),
                "targets": list(self.targets), "kinds": self.kinds, "tensors": self.tensors,
                "dtypes": self.dtypes, "not_lora": list(self.not_lora)}


# ---------------------------------------------------------------- reading


def _shapes(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype name)} from the header (a torch file: mapped, only its metadata read)."""
    if path.suffix == ".safetensors":
        from lightx2v.loading.safetensors_io import read_safetensors_header

        infos = read_safetensors_header(path)
        return {k: (tuple(s), str(d).replace("torch.", "")) for k, (s, d) in infos.items()}
    from lightx2v.loading.state_dict import read_tensors

    return {k: (tuple(t.shape), str(t.dtype).replace("torch.", "")) for k, t in read_tensors(path).items()}


def _alpha_values(path: Path, keys: list[str]) -> list[float]:
    if not keys:
        return []
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return [float(f.get_tensor(k).float().item()) for k in keys]
    from lightx2v.loading.state_dict import read_tensors

    sd = read_tensors(path)
    return [float(sd[k].float().item()) for k in keys]


def is_lora_file(path: str | Path) -> bool:
    """A weight file whose tensors are LoRA tensors (by lora.py's key rules) and not a DiT's."""
    path = Path(path)
    if not path.is_file() or path.suffix not in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
        return False
    keys = list(_shapes(path))
    lora = sum(not isinstance(_split_key(k), str) for k in keys)
    return lora > 0 and lora * 2 >= len(keys)


# ---------------------------------------------------------------- names


def _dotted(path: str) -> str:
    """kohya's `blocks_0_self_attn_q` -> `blocks.0.self_attn.q` (display only; see the module docstring)."""
    m = _BLOCK.match(path)
    if m is None:
        return path
    rest = (m["rest"] or "").split("_") if m["rest"] else []
    if len(rest) >= 3:
        rest = ["_".join(rest[:2]), "_".join(rest[2:])]
    return ".".join([m["stack"].replace("_", "."), m["i"], *rest])


def _family_names(paths: list[str]) -> tuple[Any, str]:
    """(family spec or None, "official" | "diffusers" | "unknown") of module paths."""
    from lightx2v.models.registry import families

    probe = [f"{p}.weight" for p in paths]
    for fam in families():
        kind = fam.dit_format.key_format(probe)
        if kind is not None:
            return fam, kind
    return None, "unknown"


def _official(path: str, names: str, family) -> str:
    if names != "diffusers":
        return path
    renamed = family.dit_format.key_from_diffusers(f"{path}.weight")
    return renamed[: -len(".weight")] if renamed and renamed.endswith(".weight") else path


def _leaf_order(leaf: str) -> tuple:
    return (_FIRST.get(leaf, 9), int(leaf) if leaf.isdigit() else 0, leaf)


def _ranges(blocks: list[int]) -> str:
    out, start = [], blocks[0]
    for a, b in zip(blocks, blocks[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(out)


def _targets(modules: dict[str, set[str]]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(block indices, lines 'blocks 0-39: self_attn q,k,v,o; ffn 0,2' + 'also: ...')."""
    per_block: dict[int, dict[str, set[str]]] = {}
    others: list[str] = []
    for path, kinds in sorted(modules.items()):
        m = _BLOCK.match(path)
        if m is None:
            extra = "" if "pair" in kinds else f" ({', '.join(sorted(kinds))})"
            others.append(path + extra)
            continue
        parent, _, leaf = (m["rest"] or "modulation").rpartition(".")
        leaf += "" if "pair" in kinds else f" ({', '.join(sorted(kinds))})"
        per_block.setdefault(int(m["i"]), {}).setdefault(parent, set()).add(leaf)
    groups: dict[str, list[int]] = {}
    for i, parents in sorted(per_block.items()):
        ordered = sorted(parents.items(), key=lambda pl: (_PARENTS.get(pl[0], 9), pl[0]))
        text = "; ".join(f"{p} {','.join(sorted(leaves, key=_leaf_order))}" if p
                         else ",".join(sorted(leaves, key=_leaf_order)) for p, leaves in ordered)
        groups.setdefault(text, []).append(i)
    lines = [f"block{'s' if len(b) > 1 else ''} {_ranges(b)}: {text}" for text, b in groups.items()]
    if others:
        lines.append(f"also: {', '.join(others)}")
    return tuple(sorted(per_block)), tuple(lines)


# ---------------------------------------------------------------- describing


def _convention(kinds: Counter) -> str:
    if kinds["lora_A"] and kinds["lora_down"]:
        return "mixed lora_A/lora_B and lora_down/lora_up"
    if kinds["lora_A"]:
        return "lora_A/lora_B (diffusers / PEFT)"
    if kinds["lora_down"]:
        return "lora_down/lora_up" + (" + alpha" if kinds["alpha"] else "") + " (kohya / ComfyUI / LightX2V)"
    return "full deltas only (diff / diff_b / diff_m, as LightX2V extracts them)"


def _alpha_text(path: Path, alpha_keys: list[str], ranks: Counter) -> str:
    if alpha_keys:
        values = Counter(_alpha_values(path, alpha_keys))
        shown = ", ".join(f"{v:g} (x{n})" for v, n in values.most_common(4))
        return f"{shown} (alpha tensors; scale = alpha / rank)"
    peft = _peft_alphas(path)
    if peft is not None:
        pattern = f", per module {dict(peft.pattern)}" if peft.pattern else ""
        rule = "alpha / sqrt(rank), rsLoRA" if peft.rslora else "alpha / rank"
        return f"lora_alpha {peft.alpha:g}{pattern} (lora_adapter_metadata; scale = {rule})"
    return "none (scale 1)" if ranks else "none"


def _fits(width: int | None, blocks: tuple[int, ...], family) -> str:
    if width is None:
        return "no low-rank pair: the width of its model cannot be read"
    depth = f", at least {max(blocks) + 1} blocks" if blocks else ""
    known = known_widths(family)
    if width in known:
        return f"for {known[width]} (dim {width}{depth})"
    owner = f"a {family.title} DiT" if family else "a model"
    return f"for {owner} of width {width}{depth} (no released model we know has that width)"


def describe_lora(path: str | Path) -> LoraInfo:
    """Describe a LoRA file from its header (and its `alpha` scalars); see the module docstring."""
    path = Path(path)
    infos = _shapes(path)
    modules: dict[tuple[str, bool], dict[str, tuple[str, tuple[int, ...]]]] = {}
    key_kinds: Counter = Counter()
    not_lora, prefixes = [], Counter()
    for key, (shape, _) in infos.items():
        split = _split_key(key)
        if isinstance(split, str):
            not_lora.append(key)
            continue
        mod, underscore, kind = split
        modules.setdefault((mod, underscore), {})[kind] = (key, shape)
        prefixes[next((p for p in _PREFIXES if key.startswith(p + mod)), "")] += 1
        key_kinds["lora_A" if ".lora_A" in key else "lora_down" if ".lora_down" in key else kind] += 1
    paths = {m: (_dotted(m) if u else m) for m, u in modules}
    family, names = _family_names(list(paths.values()))
    ranks, widths, kinds = Counter(), Counter(), Counter()
    targets: dict[str, set[str]] = {}
    for (mod, _), group in modules.items():
        name = _official(paths[mod], names, family)
        got = targets.setdefault(name, set())
        if all(k in group for k in _PAIR_KINDS):
            (_, down), (_, up) = group["down"], group["up"]
            ranks[down[0]] += 1
            widths[up[0]] += 1
            widths[math.prod(down[1:])] += 1
            kinds["pairs"] += 1
            got.add("pair")
        for k in ("diff", "diff_b", "diff_m", "up_bias"):
            if k in group:
                kinds["bias" if k == "up_bias" else k] += 1
                got.add(k)
    blocks, lines = _targets(targets)
    alpha_keys = [g["alpha"][0] for g in modules.values() if "alpha" in g]
    width = widths.most_common(1)[0][0] if widths else None
    prefix = prefixes.most_common(1)[0][0] if prefixes else ""
    return LoraInfo(
        path=path, convention=_convention(key_kinds), prefix=prefix, names=names,
        family=family.name if family else None,
        ranks=dict(sorted(ranks.items())), alpha=_alpha_text(path, alpha_keys, ranks), widths=dict(widths),
        width=width, fits=_fits(width, blocks, family), blocks=blocks, targets=lines, kinds=dict(kinds),
        tensors=len(infos), dtypes=dict(Counter(d for _, d in infos.values()).most_common()),
        not_lora=tuple(not_lora),
    )
