"""Build a family's components on the meta device and load their weights (mmap + assign).

Generic: what each component is, how it is built, read and in which dtype it loads comes from
the family's spec (`FamilySpec.components`); the DiT goes through lightx2v.loading.dit_files,
which handles every DiT file kind the family's `DitFormat` describes. Components load onto the
staging device the engine names; `apply_engine` places them (lightx2v.runtime.engine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from lightx2v.config import ModelConfig
from lightx2v.errors import InputError
from lightx2v.loading.state_dict import load_into
from lightx2v.models.registry import ComponentSpec


def load_component(mc: ModelConfig, name: str, device: torch.device, dtype: torch.dtype) -> Optional[nn.Module]:
    """Component `name` of the checkpoint, loaded on `device` in the dtype its spec gives for `dtype`
    (None when this checkpoint does not have it, e.g. CLIP of a T2V model)."""
    comp = mc.spec.component(name)
    if not comp.needed(mc):
        return None
    with torch.device("meta"):
        model = comp.build(mc)
    keep = getattr(model, "_keep_in_fp32", ())
    load_into(model, comp.read(mc), dtype=comp.dtype(dtype), device=device, keep_fp32=keep, what=comp.what)
    return model.eval().requires_grad_(False)


def load_dit(mc: ModelConfig, device: torch.device, dtype: torch.dtype, quant: Optional[str] = None,
             name: str = "dit") -> nn.Module:
    """DiT `name` of the folder ("dit"; a two-expert model's second, "dit_2"), or the file the
    user gave for it (`mc.dit_source` / `mc.dit_source_2`).

    One path for every source (lightx2v.loading.dit_files.build_dit): a pre-quantized file loads
    into quantized layers as it is; `quant` on float weights quantizes the declared linears as
    each tensor is read, so the float model is never whole in memory (the engine asks for this
    when nothing before quantization in its order needs the float weights). Its config is
    `mc.arch.<name>`, its files `mc.files[name]`.
    """
    from lightx2v.errors import CheckpointError
    from lightx2v.loading.dit_files import build_dit, inspect_dit_files

    expected = getattr(mc.arch, name, None)
    if expected is None or name not in mc.files:
        raise CheckpointError(f"this {mc.spec.title} {mc.task} checkpoint has no DiT {name!r}")
    src = mc.dit_source_for(name)
    if src is None:
        src = inspect_dit_files(mc.files[name])
    return build_dit(src, dtype=dtype, device=device, expected=expected, quant=quant)


# ---- a component the user gives as a file (Wan2.1's tiny VAE) ----------------------------------


@dataclass(frozen=True)
class FileComponentSpec(ComponentSpec):
    """A component that comes from a file the user names, not from the model folder (Wan2.1's tiny
    VAE, `--tiny-vae`). `attach(mc, path, **options)` checks the file (a wrong one is one line,
    before any weight is read) and returns `mc` recording it; `needed(mc)` is then true."""

    attach: Optional[Callable[..., ModelConfig]] = None


def attach_component_file(mc: ModelConfig, name: str, path: str | os.PathLike, **options) -> ModelConfig:
    """`mc` with the user's file for component `name` (e.g. "tiny_vae"), through the family's
    `FileComponentSpec.attach`; a family that has no such component refuses it by name."""
    comp = next((c for c in mc.spec.components if c.name == name), None)
    if not isinstance(comp, FileComponentSpec) or comp.attach is None:
        what = name.replace("_", " ")
        raise InputError(f"{name} cannot be used with {mc.spec.title} {mc.task} models: they take no {what} file",
                         field=name)
    return comp.attach(mc, path, **options)
