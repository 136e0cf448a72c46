"""Find out what a model folder is, without reading any weights: through the family registry.

Every registered family is asked whether it recognises the folder (lightx2v.models.registry);
the one that does reads its configs into a `ModelConfig` and refines it (a DiT file the user
gives, a preset). When none does, the error says which families were tried and why each did
not match. This file names no family: docs/formats.md lists each family's layouts.
"""

from __future__ import annotations

from pathlib import Path

from lightx2v.config import ModelConfig
from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.registry import families, recognise


def detect(path: str | Path, *, dit_path: str | Path | None = None, preset: str | None = None,
           hints: tuple[str, ...] = (), dit_path_2: str | Path | None = None) -> ModelConfig:
    """ModelConfig of a local model folder; a clear CheckpointError if it is not one we know.

    dit_path: DiT weights that replace the folder's (a two-expert model's first, high-noise one);
    dit_path_2: the second DiT's (a two-expert model's low-noise expert); preset: a preset name of
    the family (e.g. a step-distilled one); hints: names (LoRA files) that may tell a distilled
    model apart, as a last resort.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CheckpointError(f"model folder not found: {root}")
    if not root.is_dir():
        raise CheckpointError(f"{root} is a file; expected a model folder ({_layouts()}); "
                              "a DiT file goes with --dit-path beside its model folder")
    spec, layout = recognise(root)
    mc = spec.model_config(root, layout)
    if dit_path_2 is None:  # (a family with one DiT need not take the argument)
        return spec.refine(mc, dit_path=dit_path, preset=preset, hints=hints)
    if "dit_2" not in mc.dit_names:
        raise InputError(f"--dit-path-2 (dit_path_2) replaces a second DiT (a low-noise expert); {root} is a "
                         f"{spec.title} {mc.task} model with one DiT: give its DiT with --dit-path", field="dit_path_2")
    return spec.refine(mc, dit_path=dit_path, preset=preset, hints=hints, dit_path_2=dit_path_2)


def _layouts() -> str:
    return "; ".join(f"{f.title}: {' or '.join(f.layouts)} layout" for f in families())
