"""Step-distilled Wan2.1 models (LightX2V's 4-step StepDistill + CfgDistill releases): what
identifies them, and the sampling defaults they get.

A distilled model has the architecture and the parameter names of its base model (T2V 14B,
I2V 14B 480P / 720P), so neither the tensors nor their names tell it apart. It must be sampled
as it was trained (ModelTC/LightX2V `configs/distill/wan21/*.json`): the timesteps
(1000, 750, 500, 250), shift 5, and no CFG (guidance 1), with `schedulers/distill.py`.

How we decide (strongest evidence first; DESIGN principle 5: never guess from a file name
where something better exists):
  1. the user's choice: a preset name from DISTILL_PRESETS (`--preset wan2.1-i2v-480p-distill`);
  2. a LightX2V config (a config.json next to the weights, or the user's LightX2V JSON) with
     `denoising_step_list`: its `denoising_step_list`, `sample_shift`, `enable_cfg` are used;
  3. LightX2V's own layout for full distilled weights: `distill_models/distill_model.safetensors`
     (or `.pt`) under the model folder, the path `WanDistillModel._load_ckpt` reads;
  4. only then a file or repo name (the LoRA releases carry nothing else: no config, no
     metadata, keys of an ordinary LoRA): a *hint*, returned with a notice line that says what was
     assumed and how to choose explicitly. The caller prints it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lightx2v.config import SamplingDefaults
from lightx2v.errors import LightX2VError
from lightx2v.schedulers.distill import check_denoising_steps

DISTILL_STEPS: tuple[int, ...] = (1000, 750, 500, 250)
# where LightX2V's runner looks for full distilled weights inside a Wan model folder
DISTILL_WEIGHT_FILES = ("distill_models/distill_model.safetensors", "distill_models/distill_model.pt")


@dataclass(frozen=True)
class DistillDefaults:
    """How a step-distilled model samples (the reference's configs/distill/wan21/*.json)."""

    solver: str = "distill"
    num_inference_steps: int = 4
    shift: float = 5.0
    guidance_scale: float = 1.0
    denoising_steps: tuple[int, ...] = DISTILL_STEPS

    def solver_options(self) -> dict[str, Any]:
        """The options for `make_scheduler("distill", config=...)`."""
        return {"denoising_steps": self.denoising_steps}

    def sampling_defaults(self, negative_prompt: str = "", fps: int = 16) -> SamplingDefaults:
        """As SamplingDefaults. area_shift stays None: the distilled I2V 480P model uses shift 5."""
        return SamplingDefaults(
            num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
            shift=self.shift, solver=self.solver, convention="official", scheduler_config=None,
            negative_prompt=negative_prompt, fps=fps, area_shift=None,
        )


DISTILL_DEFAULTS = DistillDefaults()


@dataclass(frozen=True)
class DistillPreset:
    """One released distilled model: what it is and where LightX2V publishes it."""

    name: str
    task: str  # "t2v" | "i2v"
    size: str  # "14B": the base model size (presets.SIZES)
    resolution: str  # "480p" | "720p": what it was trained at (presets.RESOLUTIONS)
    base_model: str  # the Wan-AI repo it was distilled from: its T5, CLIP and VAE are used
    releases: tuple[str, ...]  # HF repos / files with these weights (full, single-file, LoRA)
    defaults: DistillDefaults = DISTILL_DEFAULTS


DISTILL_PRESETS: Mapping[str, DistillPreset] = MappingProxyType({
    "wan2.1-t2v-14b-distill": DistillPreset(
        "wan2.1-t2v-14b-distill", "t2v", "14B", "480p", "Wan-AI/Wan2.1-T2V-14B",
        ("lightx2v/Wan2.1-T2V-14B-StepDistill-CfgDistill-Lightx2v",
         "lightx2v/Wan2.1-Distill-Models: wan2.1_t2v_14b_*lightx2v_4step.safetensors",
         "lightx2v/Wan2.1-Distill-Loras: wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors",
         "Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors"),
    ),
    "wan2.1-i2v-480p-distill": DistillPreset(
        "wan2.1-i2v-480p-distill", "i2v", "14B", "480p", "Wan-AI/Wan2.1-I2V-14B-480P",
        ("lightx2v/Wan2.1-I2V-14B-480P-StepDistill-CfgDistill-Lightx2v",
         "lightx2v/Wan2.1-Distill-Models: wan2.1_i2v_480p_*lightx2v_4step.safetensors",
         "lightx2v/Wan2.1-Distill-Loras: wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors",
         "Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors"),
    ),
    "wan2.1-i2v-720p-distill": DistillPreset(
        "wan2.1-i2v-720p-distill", "i2v", "14B", "720p", "Wan-AI/Wan2.1-I2V-14B-720P",
        ("lightx2v/Wan2.1-I2V-14B-720P-StepDistill-CfgDistill-Lightx2v",
         "lightx2v/Wan2.1-Distill-Models: wan2.1_i2v_720p_*lightx2v_4step.safetensors"),
    ),
})


@dataclass(frozen=True)
class DistillMatch:
    """The decision of `distill_preset_for`: which defaults, on what evidence."""

    defaults: DistillDefaults
    evidence: str  # what decided it, e.g. for `lightx2v info`
    preset: DistillPreset | None = None  # None where the evidence does not say which release
    notice: str | None = None  # a line to print: set when it was assumed from a name


def cfg_warning(guidance_scale: float) -> str | None:
    """The one-line warning for CFG on a distilled model; None at guidance 1 (no CFG)."""
    if guidance_scale == 1.0:
        return None
    return (
        f"guidance_scale {guidance_scale:g} with a step-distilled model: it was distilled without CFG "
        "(guidance 1), so CFG doubles the cost of every step and over-saturates the video; use 1.0"
    )


def defaults_from_lightx2v_config(config: Mapping[str, Any]) -> DistillDefaults | None:
    """Distill defaults from a LightX2V config dict; None when it has no `denoising_step_list`.

    `infer_steps` is ignored as in the reference (the step count is the list's length);
    `enable_cfg` false (or absent) means guidance 1, true means `sample_guide_scale`.
    """
    steps = config.get("denoising_step_list")
    if steps is None:
        return None
    method = config.get("distill_method", "dmd2")
    if method != "dmd2":
        # mean_flow models take a second timestep input that WanModel does not have
        raise LightX2VError(f"distill_method {method!r} is not supported; supported: dmd2")
    steps = check_denoising_steps(steps, int(config.get("num_train_timesteps", 1000)))
    shift = config.get("sample_shift", DISTILL_DEFAULTS.shift)
    guidance = 1.0
    if config.get("enable_cfg", False):
        guidance = config.get("sample_guide_scale", 1.0)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise LightX2VError(f"sample_shift must be a number > 0, got {shift!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
        # Wan2.2 configs give a [high, low] pair: not a Wan2.1 distilled model
        raise LightX2VError(f"sample_guide_scale must be one number for a Wan2.1 distilled model, got {guidance!r}")
    return replace(
        DISTILL_DEFAULTS, num_inference_steps=len(steps), shift=float(shift),
        guidance_scale=float(guidance), denoising_steps=steps,
    )


def distill_preset_for(
    task: str,
    *,
    preset: str | None = None,
    config: Mapping[str, Any] | None = None,
    root: str | Path | None = None,
    name: str | None = None,
    dit: Any = None,
) -> DistillMatch | None:
    """Whether a checkpoint is step-distilled, and its defaults; None when nothing says so.

    task: the detected task ("t2v" | "i2v"); preset: the user's explicit choice; config: a
    LightX2V config dict; root: the model folder; name: the weight file or repo name (a hint
    only); dit: the WanDiTConfig, to check a preset's model size. A config's numbers win over a
    preset's defaults (it states how that checkpoint samples).
    """
    from_config = defaults_from_lightx2v_config(config) if config is not None else None
    if preset is not None:
        chosen = _chosen_preset(preset, task, dit)
        return DistillMatch(from_config or chosen.defaults, f"preset {preset!r}", chosen)
    if from_config is not None:
        return DistillMatch(from_config, "LightX2V config: denoising_step_list", _only_preset(task))
    if root is not None:
        for rel in DISTILL_WEIGHT_FILES:
            if (Path(root) / rel).is_file():
                return DistillMatch(DISTILL_DEFAULTS, f"LightX2V layout: {rel}", _only_preset(task))
    if name is not None:
        return _hint_from_name(name, task)
    return None


def check_preset(presets: Mapping[str, Any], preset: str, task: str, size: str | None, known_sizes,
                 family: str = "") -> Any:
    """`presets[preset]`, checked against the checkpoint's task and model size (a size name outside
    `known_sizes`, a custom model, is not checked); one LightX2VError line otherwise. Shared by the
    Wan2.1 and Wan2.2 presets (`family`: the title the messages give, e.g. "Wan2.2")."""
    chosen = presets.get(preset)
    fam = f" {family}" if family else ""
    if chosen is None:
        raise LightX2VError(f"unknown preset {preset!r}{' for' + fam if family else ''}; expected one of {', '.join(presets)}")
    if chosen.task != task:
        raise LightX2VError(f"preset {preset!r} is a{fam} {chosen.task} model, but this checkpoint is {task}")
    if size is not None and size in known_sizes and size != chosen.size:
        raise LightX2VError(f"preset {preset!r} is for the {chosen.size} model, but this checkpoint is {size}")
    return chosen


def _chosen_preset(preset: str, task: str, dit: Any) -> DistillPreset:
    from lightx2v.models.wan.presets import SIZES, size_name

    return check_preset(DISTILL_PRESETS, preset, task, None if dit is None else size_name(dit), SIZES.values())


def _only_preset(task: str) -> DistillPreset | None:
    """The preset of `task` when there is exactly one (t2v); i2v has a 480p and a 720p release."""
    found = [p for p in DISTILL_PRESETS.values() if p.task == task]
    return found[0] if len(found) == 1 else None


# a distill marker in LightX2V's release names: "..._lightx2v_4step", "cfg_step_distill", "StepDistill"
_DISTILL_NAME = re.compile(r"4step|step_?distill", re.IGNORECASE)
_OTHER_FAMILY = re.compile(r"wan_?2\.?2|1\.3b|1_3b", re.IGNORECASE)  # releases with other schedules


def _hint_from_name(name: str, task: str) -> DistillMatch | None:
    """A preset assumed from a file or repo name, with the notice saying so; None if it does not fit."""
    base = Path(name).name or name
    if not _DISTILL_NAME.search(base) or _OTHER_FAMILY.search(base):
        return None
    low = base.lower()
    named_task = "i2v" if "i2v" in low else "t2v" if "t2v" in low else None
    if named_task != task:
        return None  # no task in the name, or another one than the checkpoint's: do not guess
    key = "wan2.1-t2v-14b-distill" if task == "t2v" else (
        "wan2.1-i2v-720p-distill" if "720p" in low else "wan2.1-i2v-480p-distill")
    chosen = DISTILL_PRESETS[key]
    d = chosen.defaults
    notice = (
        f"assuming {key} from the name {base!r}: {d.num_inference_steps} steps "
        f"({', '.join(map(str, d.denoising_steps))}), shift {d.shift:g}, guidance {d.guidance_scale:g}; "
        f"pass --preset to choose ({', '.join(DISTILL_PRESETS)})"
    )
    return DistillMatch(d, f"file name {base!r}", chosen, notice)
