"""The Qwen-Image Lightning presets: 4 and 8 steps, CFG off, the schedule the Lightning LoRAs were distilled on.

LightX2V's Lightning releases for Qwen-Image are LoRAs (lightx2v/Qwen-Image-Lightning:
`Qwen-Image-Lightning-{4,8}steps-V{1.0,1.1,2.0}.safetensors`, `Qwen-Image-Edit-Lightning-*`,
`Qwen-Image-Edit-2509/...`; lightx2v/Qwen-Image-2512-Lightning and lightx2v/Qwen-Image-Edit-2511-Lightning:
`...-{4,8}steps-V1.0-{fp32,bf16}.safetensors`) and the same weights merged into fp8 DiT files
(`qwen_image_2512_fp8_e4m3fn_scaled_{4,8}steps_v1.0.safetensors`, loaded with `--dit-path`). Neither
the LoRA's tensors nor the DiT's names say "distilled": the user names the preset (`--preset
qwen-image-lightning-4step --lora FILE`), or a LoRA / DiT file name with "Qwen" and "4steps" /
"8steps" in it is taken as a hint, with a notice saying what was assumed (as Wan's distill presets,
lightx2v.models.wan.distill: the LoRA files carry nothing else).

Sampling (the Lightning README and its generate_with_diffusers.py, ModelTC/Qwen-Image-Lightning): a
FlowMatchEulerDiscreteScheduler built from
    base_image_seq_len 256, max_image_seq_len 8192, base_shift = max_shift = ln 3 ("We use shift=3 in
    distillation"), use_dynamic_shifting true, shift_terminal None, time_shift_type exponential,
    shift 1.0, num_train_timesteps 1000 (karras / exponential / beta sigmas, stochastic sampling off)
replacing the checkpoint's scheduler (mu is ln 3 at every size: sigma' = 3 s / (1 + 2 s), no terminal
stretch), `true_cfg_scale` 1.0 (one DiT call a step), 4 or 8 steps, the negative prompt " ".
ModelTC/LightX2V's own configs for the 2512 / Edit-2511 Lightning releases
(configs/qwen_image/qwen_image_t2i_2512_distill.json, qwen_image_i2i_2511_distill.json: infer_steps 8,
enable_cfg false) keep the folder's scheduler instead; we follow the Lightning README, which the
diffusers and ComfyUI workflows of the release use, and say so in docs/cli.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Optional

from lightx2v.errors import InputError
from lightx2v.models.qwen_image.schedule import QwenSchedule

# The Lightning README's scheduler_config (see the module docstring): shift 3 at every resolution.
LIGHTNING_SCHEDULE = QwenSchedule(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=math.log(3), max_shift=math.log(3),
    base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=None, time_shift_type="exponential",
)


@dataclass(frozen=True)
class LightningPreset:
    """One Lightning preset: its step count and the releases it is for."""

    name: str
    num_inference_steps: int
    releases: tuple[str, ...]  # LoRA / DiT files published for it (hub repo: file pattern)
    guidance_scale: float = 1.0  # CFG off: distilled without it
    schedule: QwenSchedule = LIGHTNING_SCHEDULE


def _releases(steps: int) -> tuple[str, ...]:
    return (f"lightx2v/Qwen-Image-Lightning: Qwen-Image-Lightning-{steps}steps-V*.safetensors",
            f"lightx2v/Qwen-Image-Lightning: Qwen-Image-Edit(-2509)-Lightning-{steps}steps-V1.0*.safetensors",
            f"lightx2v/Qwen-Image-2512-Lightning: Qwen-Image-2512-Lightning-{steps}steps-V1.0-*.safetensors, "
            f"qwen_image_2512_fp8_e4m3fn_scaled_{steps}steps_v1.0.safetensors",
            f"lightx2v/Qwen-Image-Edit-2511-Lightning: Qwen-Image-Edit-2511-Lightning-{steps}steps-V1.0-*.safetensors")


LIGHTNING_PRESETS: Mapping[str, LightningPreset] = MappingProxyType({
    "qwen-image-lightning-4step": LightningPreset("qwen-image-lightning-4step", 4, _releases(4)),
    "qwen-image-lightning-8step": LightningPreset("qwen-image-lightning-8step", 8, _releases(8)),
})


@dataclass(frozen=True)
class LightningMatch:
    """Why a checkpoint samples as a Lightning preset (ModelConfig.distill; `info` prints `evidence`)."""

    preset: LightningPreset
    evidence: str
    notice: Optional[str] = None  # a line to print: set when it was assumed from a file name

    @property
    def name(self) -> str:
        return self.preset.name


def chosen_preset(name: str) -> LightningPreset:
    """The preset `name`; one InputError line naming the choices otherwise."""
    preset = LIGHTNING_PRESETS.get(name)
    if preset is None:
        raise InputError(f"Qwen-Image has no preset {name!r}; expected one of {', '.join(LIGHTNING_PRESETS)}",
                         field="preset")
    return preset


# "Qwen-Image-Lightning-4steps-V1.0", "Qwen-Image-2512-Lightning-8steps-V1.0-bf16",
# "qwen_image_edit_2511_fp8_e4m3fn_scaled_lightning_4steps_v1.0", "qwen_image_2512_fp8_e4m3fn_scaled_8steps_v1.0"
_STEPS = re.compile(r"(?<![0-9])([48])[-_ ]?steps?(?![a-z0-9])", re.IGNORECASE)


def preset_from_name(name: str) -> Optional[LightningMatch]:
    """A preset assumed from a LoRA or DiT file name ("...Lightning-4steps..."), with the notice that says so;
    None when the name does not state a Lightning step count."""
    base = Path(name).name or name
    m = _STEPS.search(base)
    if m is None or not re.search(r"qwen", base, re.IGNORECASE):  # another family's 4-step file is not ours
        return None
    preset = LIGHTNING_PRESETS[f"qwen-image-lightning-{m[1]}step"]
    notice = (f"assuming {preset.name} from the name {base!r}: {preset.num_inference_steps} steps, shift 3, "
              f"guidance 1 (no CFG); pass --preset to choose ({', '.join(LIGHTNING_PRESETS)})")
    return LightningMatch(preset, f"file name {base!r}", notice)


def cfg_warning(match: LightningMatch, guidance_scale: float) -> Optional[str]:
    """One warning line for CFG on a Lightning preset (distilled without it); None at guidance 1."""
    if guidance_scale <= 1.0:
        return None
    return (f"guidance_scale {guidance_scale:g} with {match.name}: the Lightning weights were distilled without CFG "
            "(guidance 1), so CFG doubles the cost of every step and over-saturates the image; use 1.0")


def apply_preset(mc, match: LightningMatch):
    """`mc` sampling as the preset: its schedule replaces the folder's, its steps and guidance the defaults."""
    p = match.preset
    defaults = replace(mc.defaults, num_inference_steps=p.num_inference_steps, guidance_scale=p.guidance_scale)
    return replace(mc, arch=replace(mc.arch, schedule=p.schedule), defaults=defaults, distill=match)
