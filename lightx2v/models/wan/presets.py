"""Wan2.1 presets: the known model sizes and the sampling defaults of the reference code.

Defaults follow the official generate.py of Wan2.1 (T2V: 50 steps, guidance 5.0, shift 5.0,
UniPC, 16 fps, the Chinese default negative prompt of wan/configs/shared_config.py). A
diffusers-layout checkpoint takes its solver and shift from its scheduler_config.json instead.
"""

from __future__ import annotations

from lightx2v.config import SamplingDefaults

# wan/configs/shared_config.py: sample_neg_prompt
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

# (dim, num_layers, num_heads, ffn_dim) -> name
SIZES = {
    (1536, 30, 12, 8960): "1.3B",
    (5120, 40, 40, 13824): "14B",
}

# name -> (height, width); the sizes the models were trained for
RESOLUTIONS = {"480p": (480, 832), "480p-portrait": (832, 480), "720p": (720, 1280), "720p-portrait": (1280, 720)}


def size_name(dit) -> str:
    """'1.3B', '14B' or 'custom (dim D, L layers)' for a WanDiTConfig."""
    key = (dit.dim, dit.num_layers, dit.num_heads, dit.ffn_dim)
    return SIZES.get(key, f"custom (dim {dit.dim}, {dit.num_layers} layers)")


def official_defaults(task: str, dit) -> SamplingDefaults:
    """Sampling defaults of the official Wan2.1 generate.py for this task: 50 steps (40 for i2v),
    shift 5.0 (3.0 for i2v at 480p sizes, 16 for flf2v), guidance 5.0, UniPC."""
    steps = 40 if task == "i2v" else 50
    shift = 16.0 if task == "flf2v" else 5.0
    return SamplingDefaults(
        num_inference_steps=steps, guidance_scale=5.0, shift=shift, solver="unipc",
        convention="official", scheduler_config=None, negative_prompt=DEFAULT_NEGATIVE_PROMPT, fps=16,
        area_shift=(832 * 480, 3.0) if task == "i2v" else None,
    )


def diffusers_defaults(task: str, dit, scheduler_config: dict) -> SamplingDefaults:
    """Defaults of a diffusers-layout checkpoint: its scheduler config decides solver and shift."""
    from lightx2v.schedulers import scheduler_from_diffusers_config

    _, sched_defaults = scheduler_from_diffusers_config(scheduler_config)
    return SamplingDefaults(
        num_inference_steps=50, guidance_scale=5.0, shift=float(sched_defaults.get("shift", 5.0)),
        solver=sched_defaults.get("solver", "unipc"), convention="diffusers",
        scheduler_config=dict(scheduler_config), negative_prompt=DEFAULT_NEGATIVE_PROMPT, fps=16,
    )
