"""LightX2V's 4-step distilled HunyuanVideo-1.5 (lightx2v/Hy1.5-Distill-Models): its preset, and the
DiT files given with --dit-path (distilled or pre-quantized: lightx2v/Hy1.5-Quantized-Models).

A distilled DiT has the base model's architecture and official key names, so nothing in the file tells it
apart: it must be sampled as LightX2V samples it (ModelTC/LightX2V
configs/hunyuan_video_15/hunyuan_video_t2v_480p_distill.json: `denoising_step_list` [1000, 750, 500, 250],
`sample_shift` 5.0, `enable_cfg` false; lightx2v/models/schedulers/hunyuan_video/step_distill/scheduler.py
samples those timesteps as Wan's distilled models do, which our `distill` solver reproduces). Its
examples/hunyuan_video/hunyuan_t2v_distill.py passes sample_shift 9.0 instead; we follow the config file.
How we decide, as for Wan2.1 (lightx2v/models/wan/distill.py): the user's `--preset`; else the name of the
--dit-path file when it carries LightX2V's `4step` marker and the folder's task (a hint, said in a warning).
The official release's own `480p_i2v_step_distilled` variant is not this: it samples with the ordinary
Euler schedule (8 or 12 steps, official.py's table).

Quantized files (LightX2V's converter, tools/convert/converter.py `hunyuan_dit`): the double blocks'
img/txt modulation, q, k, v, projection and MLP linears hold int8 or float8_e4m3fn weights with a
per-channel `weight_scale`; the generic DiT-file code (lightx2v.loading.dit_files) detects the scheme from
the tensors and loads them into QuantLinear layers with no float copy (`_quant_linears` of the DiT names
the same layers).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Optional

from lightx2v.config import ModelConfig
from lightx2v.errors import CheckpointError
from lightx2v.models.wan.distill import DistillDefaults, DistillMatch, DistillPreset, check_preset

# configs/hunyuan_video_15/hunyuan_video_t2v_480p_distill.json (ModelTC/LightX2V)
HY15_DISTILL_DEFAULTS = DistillDefaults(num_inference_steps=4, shift=5.0, guidance_scale=1.0,
                                        denoising_steps=(1000, 750, 500, 250))
DISTILL_FPS = 16  # the same config: fps 16 (target_video_length 81)

DISTILL_PRESETS = MappingProxyType({
    "hunyuanvideo-1.5-t2v-480p-distill": DistillPreset(
        "hunyuanvideo-1.5-t2v-480p-distill", "t2v", "8.3B", "480p", "tencent/HunyuanVideo-1.5 (480p_t2v)",
        ("lightx2v/Hy1.5-Distill-Models: hy1.5_t2v_480p_lightx2v_4step.safetensors (bf16 and fp8 files)",),
        HY15_DISTILL_DEFAULTS),
})
PRESET_NAMES = tuple(DISTILL_PRESETS)
_MARKER = re.compile(r"4step", re.IGNORECASE)


def with_dit_file(mc: ModelConfig, dit_path) -> ModelConfig:
    """The folder's DiT replaced by the user's file (official keys: a distilled file, a LightX2V
    quantized file, a ComfyUI-prefixed file, shards or a block folder); it must fit the folder's model."""
    from lightx2v.loading.dit_files import inspect_dit_source
    from lightx2v.models.hunyuan15.dit_format import HUNYUAN15_DIT_FORMAT

    src = inspect_dit_source(dit_path)
    if src.family != mc.family:
        raise CheckpointError(f"{dit_path} is a {src.looks_like}; the folder is a {mc.spec.title} model")
    HUNYUAN15_DIT_FORMAT.check_matches(src.config, mc.dit, str(dit_path))
    # the folder's own DiT files stay known: what the file lacks of the condition projections comes from them
    files = {**mc.files, "dit": tuple(str(p) for p in src.files), "dit_folder": mc.files["dit"]}
    return dataclasses.replace(mc, files=files, dit_source=src)


def _size(mc: ModelConfig) -> str:
    return "8.3B" if (mc.dit.hidden_size, mc.dit.num_layers) == (2048, 54) else "custom"


def _hint(name: str, task: str) -> Optional[DistillMatch]:
    if not _MARKER.search(name):
        return None
    low = name.lower()
    chosen = next((p for p in DISTILL_PRESETS.values() if p.task == task and p.task in low), None)
    if chosen is None:
        return None
    d = chosen.defaults
    notice = (f"assuming {chosen.name} from the name {name!r}: {d.num_inference_steps} steps "
              f"({', '.join(map(str, d.denoising_steps))}), shift {d.shift:g}, guidance {d.guidance_scale:g}; "
              f"pass --preset to choose ({', '.join(DISTILL_PRESETS)})")
    return DistillMatch(d, f"file name {name!r}", chosen, notice)


def with_distill(mc: ModelConfig, preset: Optional[str], names: tuple[str, ...]) -> ModelConfig:
    """The distilled defaults when the user names the preset, or a --dit-path name says `4step`."""
    if preset is not None:
        chosen = check_preset(DISTILL_PRESETS, preset, mc.task, _size(mc), ("8.3B",), "HunyuanVideo-1.5")
        match = DistillMatch(chosen.defaults, f"preset {preset!r}", chosen)
    else:
        match = next((m for n in names if (m := _hint(Path(n).name, mc.task)) is not None), None)
    if match is None:
        return mc
    if match.notice:
        warnings.warn(match.notice, stacklevel=4)
    d = match.defaults
    defaults = dataclasses.replace(mc.defaults, num_inference_steps=d.num_inference_steps,
                                   guidance_scale=d.guidance_scale, shift=d.shift, solver=d.solver,
                                   convention="official", scheduler_config=None, solver_options=d.solver_options(),
                                   fps=DISTILL_FPS)
    return dataclasses.replace(mc, defaults=defaults, distill=match)
