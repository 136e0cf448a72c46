"""Wan2.2 A14B LoRAs that say which expert they are for (`FamilySpec.lora_experts`).

An A14B LoRA release is one file per expert:
- Wan2.2-Lightning (lightx2v/Wan2.2-Lightning): a folder per release,
  `Wan2.2-{T2V,I2V}-A14B-4steps-lora-*/`, holding `high_noise_model.safetensors` and
  `low_noise_model.safetensors` (its configs' `high_noise_lora_checkpoint` /
  `low_noise_lora_checkpoint`). Given as `--lora DIR`, each file goes to its expert.
- LightX2V's distill LoRAs (lightx2v/Wan2.2-Distill-Loras):
  `wan2.2_{i2v,t2v}_A14b_{high,low}_noise_lora_rank64_lightx2v_4step_*.safetensors`; and a Lightning
  file given alone (`high_noise_model.safetensors`). Given as a plain `--lora FILE`, the file goes
  to the expert its name says, not to both.
A name is a hint: a one-line warning says what was assumed. `--lora-high` / `--lora-low`
(`lora_high=`, `lora_low=`) say it explicitly, and take a file whatever its name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from lightx2v.errors import InputError

LIGHTNING_FILES = {"high": "high_noise_model.safetensors", "low": "low_noise_model.safetensors"}
# `{high,low}_noise_lora` (LightX2V) or `{high,low}_noise_model` (a Lightning file), as a whole word
_NAMED = re.compile(r"(?:^|[^a-z0-9])(high|low)_noise_(?:lora|model)(?:[^a-z0-9]|$)")
_EXPLICIT = "--lora-high / --lora-low (lora_high= / lora_low=) say it explicitly"


def lora_experts(path: Path) -> Optional[tuple[dict[str, Path], str]]:
    """({expert: file}, notice) for a Lightning folder or a file named for one expert; None otherwise."""
    if path.is_dir():
        found = {e: path / f for e, f in LIGHTNING_FILES.items() if (path / f).is_file()}
        if not found:
            return None
        if len(found) < len(LIGHTNING_FILES):
            (have,), missing = found.values(), [f for e, f in LIGHTNING_FILES.items() if e not in found]
            raise InputError(f"LoRA folder {path} holds {have.name} but not {missing[0]} (a Wan2.2-Lightning "
                             "folder has one LoRA per expert); give the files with --lora-high / --lora-low",
                             field="lora")
        return found, (f"LoRA folder {path.name}: taken as a Wan2.2-Lightning folder, {LIGHTNING_FILES['high']} "
                       f"for the high-noise expert and {LIGHTNING_FILES['low']} for the low-noise one "
                       f"({_EXPLICIT})")
    m = _NAMED.search(path.stem.lower())
    if m is None:
        return None
    expert = m.group(1)
    other = "low" if expert == "high" else "high"
    return {expert: path}, (f"LoRA {path.name}: its name says the {expert}-noise expert, so it goes to that "
                            f"expert only, not the {other}-noise one ({_EXPLICIT})")
