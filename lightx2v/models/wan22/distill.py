"""Step-distilled Wan2.2 A14B models (LightX2V's 4-step releases, and Wan2.2-Lightning LoRAs).

They sample as LightX2V's `configs/distill/wan22/*.json` and `configs/wan22/wan_moe_t2v_distill.json`
say: the timesteps (1000, 750, 500, 250) with shift 5 (the `distill` solver), no CFG (guidance 1
for both experts), and the high-noise expert for steps 0 and 1, the low-noise one for steps 2 and 3
(`boundary_step_index` 2: our `switch_step`). Wan2.2-Lightning's Euler schedule at shift 5 gives
the same timesteps and, at its boundaries 0.875 / 0.9, the same 2 + 2 split. TI2V-5B has no
distilled release.

Evidence, strongest first (as Wan2.1's, lightx2v.models.wan.distill):
  1. a preset the user names (`--preset wan2.2-i2v-a14b-distill`);
  2. a LightX2V config with `denoising_step_list` (config.json at the folder's root or in an
     expert's folder): its steps, `sample_shift`, `enable_cfg` + `sample_guide_scale` ([high, low]
     in LightX2V's order, the reverse of the official tuple) and `boundary_step_index`;
  3. LightX2V's layout: `distill_models/{high,low}_noise_model/distill_model.safetensors` (the
     distilled experts, which then replace the folder's);
  4. a name (the --dit-path / --dit-path-2 files, LoRA files and their folders, the model folder):
     `wan2.2_{t2v,i2v}_A14b_{high,low}_noise_*lightx2v_4step*`, `Wan2.2-I2V-A14B-4steps-lora-*`: a
     hint, with a notice saying what was assumed.

The 720p release (`..._lightx2v_4step_720p_260412.safetensors`, 2026-04) ships no config; its
preset assumes the settings of the first release (LightX2V documents no others).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional

from lightx2v.config import SamplingDefaults
from lightx2v.errors import LightX2VError
from lightx2v.models.wan.distill import DistillDefaults, DistillMatch, DistillPreset
from lightx2v.schedulers.distill import check_denoising_steps

SWITCH_STEP = 2  # LightX2V's boundary_step_index
# LightX2V's layout of the distilled experts inside a Wan2.2 A14B folder: expert folder -> file names
DISTILL_WEIGHT_FILES = {
    "dit": ("distill_models/high_noise_model/distill_model.safetensors", "distill_models/high_noise_model/distill_model.pt"),
    "dit_2": ("distill_models/low_noise_model/distill_model.safetensors", "distill_models/low_noise_model/distill_model.pt"),
}


@dataclass(frozen=True)
class Wan22DistillDefaults(DistillDefaults):
    """How a distilled Wan2.2 A14B model samples: Wan2.1's 4-step defaults, a guidance per expert, the switch step."""

    guidance_scale_2: float = 1.0
    switch_step: int = SWITCH_STEP

    def sampling_defaults(self, negative_prompt: str = "", fps: int = 16) -> SamplingDefaults:
        return replace(super().sampling_defaults(negative_prompt, fps), guidance_scale_2=self.guidance_scale_2,
                       solver_options=self.solver_options())


DISTILL_DEFAULTS = Wan22DistillDefaults()
_MODELS = "lightx2v/Wan2.2-Distill-Models"
_LORAS = "lightx2v/Wan2.2-Distill-Loras"

DISTILL_PRESETS: Mapping[str, DistillPreset] = MappingProxyType({
    "wan2.2-t2v-a14b-distill": DistillPreset(
        "wan2.2-t2v-a14b-distill", "t2v", "A14B", "480p", "Wan-AI/Wan2.2-T2V-A14B",
        (f"{_MODELS}: wan2.2_t2v_A14b_{{high,low}}_noise_*lightx2v_4step*.safetensors",
         f"{_LORAS}: wan2.2_t2v_A14b_{{high,low}}_noise_lora_rank64_lightx2v_4step_1217.safetensors",
         "lightx2v/Wan2.2-Lightning: Wan2.2-T2V-A14B-4steps-lora-*/{high,low}_noise_model.safetensors"),
        DISTILL_DEFAULTS,
    ),
    "wan2.2-i2v-a14b-distill": DistillPreset(
        "wan2.2-i2v-a14b-distill", "i2v", "A14B", "720p", "Wan-AI/Wan2.2-I2V-A14B",
        (f"{_MODELS}: wan2.2_i2v_A14b_{{high,low}}_noise_*lightx2v_4step*.safetensors (bf16, fp8, int8; _1030)",
         f"{_LORAS}: wan2.2_i2v_A14b_{{high,low}}_noise_lora_rank64_lightx2v_4step_1022.safetensors",
         "lightx2v/Wan2.2-Lightning: Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1/{high,low}_noise_model.safetensors"),
        DISTILL_DEFAULTS,
    ),
    "wan2.2-i2v-a14b-720p-distill": DistillPreset(
        "wan2.2-i2v-a14b-720p-distill", "i2v", "A14B", "720p", "Wan-AI/Wan2.2-I2V-A14B",
        (f"{_MODELS}: wan2.2_i2v_A14b_{{high,low}}_noise_lightx2v_4step_720p_260412.safetensors",),
        DISTILL_DEFAULTS,
    ),
})


def _number(config: Mapping[str, Any], key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise LightX2VError(f"LightX2V config: {key} must be a number > 0, got {value!r}")
    return float(value)


def defaults_from_lightx2v_config(config: Mapping[str, Any]) -> Optional[Wan22DistillDefaults]:
    """Distill defaults from a LightX2V Wan2.2 config dict; None without `denoising_step_list`.

    `sample_guide_scale` is LightX2V's [high, low] pair (or one number for both), used only with
    `enable_cfg` true; `boundary_step_index` is the first step of the low-noise expert."""
    steps = config.get("denoising_step_list")
    if steps is None:
        return None
    method = config.get("distill_method", "dmd2")
    if method != "dmd2":
        raise LightX2VError(f"LightX2V config: distill_method {method!r} is not supported; supported: dmd2")
    steps = check_denoising_steps(steps, int(config.get("num_train_timesteps", 1000)))
    shift = _number(config, "sample_shift", config.get("sample_shift", DISTILL_DEFAULTS.shift))
    high = low = 1.0
    if config.get("enable_cfg", False):
        g = config.get("sample_guide_scale", 1.0)
        pair = list(g) if isinstance(g, (list, tuple)) else [g, g]
        if len(pair) != 2:
            raise LightX2VError(f"LightX2V config: sample_guide_scale must be one number or a [high, low] pair, got {g!r}")
        high, low = (_number(config, "sample_guide_scale", v) for v in pair)
    switch = config.get("boundary_step_index", SWITCH_STEP)
    if isinstance(switch, bool) or not isinstance(switch, int) or not 1 <= switch < len(steps):
        raise LightX2VError(f"LightX2V config: boundary_step_index must be an integer from 1 to {len(steps) - 1} "
                            f"(the first step of the low-noise expert), got {switch!r}")
    return replace(DISTILL_DEFAULTS, num_inference_steps=len(steps), shift=shift, guidance_scale=high,
                   guidance_scale_2=low, denoising_steps=steps, switch_step=switch)


def chosen_preset(preset: str, task: str, dit: Any) -> DistillPreset:
    """The user's preset, checked against the checkpoint (task, model size)."""
    from lightx2v.models.wan.distill import check_preset
    from lightx2v.models.wan22.presets import SIZES, size_name

    return check_preset(DISTILL_PRESETS, preset, task, size_name(dit), SIZES.values(), family="Wan2.2")


def distill_preset_for(task: str, *, preset: Optional[str] = None, configs: tuple[Mapping, ...] = (),
                       root: Optional[Path] = None, names: tuple[str, ...] = (), dit: Any = None
                       ) -> Optional[DistillMatch]:
    """Whether a Wan2.2 checkpoint is step-distilled, and how it samples; None when nothing says so
    (see the module docstring for the order). A config's numbers win over a preset's defaults."""
    from_config = next((d for c in configs if (d := defaults_from_lightx2v_config(c)) is not None), None)
    if preset is not None:
        chosen = chosen_preset(preset, task, dit)
        return DistillMatch(from_config or chosen.defaults, f"preset {preset!r}", chosen)
    if task == "ti2v":
        return None
    only = next(p for p in DISTILL_PRESETS.values() if p.task == task)  # (the first release of the task)
    if from_config is not None:
        return DistillMatch(from_config, "LightX2V config: denoising_step_list", only)
    if root is not None:
        found = [rel for rels in DISTILL_WEIGHT_FILES.values() for rel in rels if (root / rel).is_file()]
        if found:
            return DistillMatch(DISTILL_DEFAULTS, f"LightX2V layout: {found[0]}", only)
    for name in names:
        if (match := hint_from_name(name, task)) is not None:
            return match
    return None


_DISTILL_NAME = re.compile(r"4_?steps?|step_?distill", re.IGNORECASE)
_WAN22 = re.compile(r"wan_?2\.?2", re.IGNORECASE)


def hint_from_name(name: str, task: str) -> Optional[DistillMatch]:
    """A preset assumed from a Wan2.2 file or folder name, with the notice saying so; None if it does not fit."""
    base = Path(name).name or name
    low = base.lower()
    if not (_DISTILL_NAME.search(base) and _WAN22.search(base)) or "ti2v" in low:
        return None
    named = "i2v" if "i2v" in low else "t2v" if "t2v" in low else None
    if named != task:
        return None  # no task in the name, or another one than the checkpoint's: do not guess
    key = "wan2.2-i2v-a14b-720p-distill" if task == "i2v" and "720p" in low else f"wan2.2-{task}-a14b-distill"
    chosen = DISTILL_PRESETS[key]
    d = chosen.defaults
    notice = (f"assuming {key} from the name {base!r}: {d.num_inference_steps} steps "
              f"({', '.join(map(str, d.denoising_steps))}), shift {d.shift:g}, no CFG, the high-noise expert for "
              f"steps 0-{d.switch_step - 1}; pass --preset to choose ({', '.join(DISTILL_PRESETS)})")
    return DistillMatch(d, f"name {base!r}", chosen, notice)

