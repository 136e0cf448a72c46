"""Wan2.2 declares itself: layouts, components, DiT format, geometry, defaults, presets, pipeline.

Wan2.2 is a configuration of the Wan modules (lightx2v.models.wan): the same DiT (`WanModel`, its
file format `WAN_DIT_FORMAT`), T5, tokenizer and Wan2.1 VAE, plus the Wan2.2 VAE (`Wan22VAE`) for
TI2V-5B. What is its own: two DiTs for A14B ("dit" the high-noise expert, "dit_2" the low-noise
one, each loaded by lightx2v.loading.components.load_dit(mc, ..., name=)), the expert boundary,
no CLIP, the size rule of TI2V-5B (multiples of 32: VAE stride 16 x patch 2), and the LoRA
releases of one file per expert (lora_files.py: Lightning folders, `..._high_noise_lora_...`).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Optional

import torch

from lightx2v.config import ModelConfig
from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.registry import ComponentSpec, FamilySpec, Geometry, register_family
from lightx2v.models.wan.dit_format import WAN_DIT_FORMAT
from lightx2v.models.wan.spec import WAN21 as wan21
from lightx2v.models.wan22 import layouts
from lightx2v.models.wan22.arch import Wan22Arch, expert_label
from lightx2v.models.wan22.lora_files import lora_experts

# ---------------------------------------------------------------- components


def _build_vae(mc: ModelConfig):
    from lightx2v.models.wan.vae22 import Wan22VAE, Wan22VAEConfig

    if isinstance(mc.arch.vae, Wan22VAEConfig):
        return Wan22VAE(mc.arch.vae)
    from lightx2v.models.wan.vae import WanVAE

    return WanVAE(mc.arch.vae)


COMPONENTS = (
    # the text encoder and how a VAE file is read are Wan2.1's (each VAE config carries its own
    # diffusers rename); only the VAE built differs (Wan2.1's for A14B, Wan2.2's for TI2V-5B)
    wan21.component("text_encoder"),
    ComponentSpec("vae", "VAE", _build_vae, wan21.component("vae").read, dtype=lambda dt: torch.float32,
                  needed=wan21.component("vae").needed),
    # -- tiny VAE (tiny_vae= / --tiny-vae): taew2_1 / lighttaew2_1 for A14B (the Wan2.1 VAE), taew2_2 /
    # lighttaew2_2 for TI2V-5B; its latent space from the folder's VAE (lightx2v.models.wan.spec) --
    wan21.component("tiny_vae"),
)
DIT_FLAGS = {"dit": "--dit-path", "dit_2": "--dit-path-2"}


# ---------------------------------------------------------------- refining: the user's DiT files, presets


def with_dit_file(mc: ModelConfig, dit_path, name: str = "dit") -> ModelConfig:
    """DiT `name` ("dit": the high-noise expert or TI2V's DiT; "dit_2": the low-noise expert)
    replaced by a file the user gives (any file kind lightx2v.loading.dit_files reads); it must be
    the same model as the folder's."""
    from lightx2v.loading.dit_files import inspect_dit_source

    expected = getattr(mc.arch, name)
    if expected is None:
        raise InputError(f"{DIT_FLAGS[name]}: this Wan2.2 {mc.task} model has no second DiT (a low-noise expert)",
                         field=name)
    src = inspect_dit_source(dit_path)
    if src.format is not WAN_DIT_FORMAT:
        raise CheckpointError(f"{dit_path} is a {src.looks_like}; the folder is a Wan2.2 model")
    WAN_DIT_FORMAT.check_matches(src.config, expected, f"{dit_path} ({DIT_FLAGS[name]}, the {expert_label(mc, name)})")
    files = {**mc.files, name: tuple(str(p) for p in src.files)}
    return dataclasses.replace(mc, files=files, **{"dit_source" if name == "dit" else "dit_source_2": src})


def _check_expert_names(mc: ModelConfig, paths: dict) -> None:
    """A file whose name says it is the other expert (LightX2V's `..._low_noise_...`, the
    `low_noise_model/` folders) given for this one: the flags are swapped."""
    if mc.arch.dit_2 is None:
        return
    for name, (mine, other) in (("dit", ("high", "low")), ("dit_2", ("low", "high"))):
        if paths.get(name) is None:
            continue
        p = Path(paths[name])
        text = f"{p.parent.name}/{p.name}".lower()
        if f"{other}_noise" in text and f"{mine}_noise" not in text:
            raise InputError(f"{DIT_FLAGS[name]} takes the {mine}-noise expert, but {p.name} is named as the "
                             f"{other}-noise one; swap --dit-path and --dit-path-2", field=name)


def _lightx2v_configs(mc: ModelConfig) -> tuple[dict, ...]:
    """LightX2V's config.json files that may say the model is distilled (A14B: the root's, the experts')."""
    if mc.task == "ti2v" or mc.layout != "official":
        return ()
    found = [mc.root / "config.json"] + [mc.root / f / "config.json" for f in layouts.EXPERT_FOLDERS["official"]]
    return tuple(layouts.read_json(p) for p in found if p.is_file())


def _with_distill(mc: ModelConfig, preset: Optional[str], names: tuple[str, ...], given: dict) -> ModelConfig:
    """Step-distilled defaults (and switch step) when a preset is named or the checkpoint says so."""
    from lightx2v.models.wan22.distill import DISTILL_WEIGHT_FILES, distill_preset_for

    match = distill_preset_for(mc.task, preset=preset, configs=_lightx2v_configs(mc), root=mc.root, names=names,
                               dit=mc.dit)
    if match is None:
        return mc
    if match.notice:
        warnings.warn(match.notice, stacklevel=4)
    d = match.defaults
    defaults = dataclasses.replace(d.sampling_defaults(mc.defaults.negative_prompt, mc.defaults.fps),
                                   height=mc.defaults.height, width=mc.defaults.width,
                                   num_frames=mc.defaults.num_frames)
    mc = dataclasses.replace(mc, defaults=defaults, distill=match,
                             arch=dataclasses.replace(mc.arch, switch_step=getattr(d, "switch_step", None)))
    for name, rels in DISTILL_WEIGHT_FILES.items():  # LightX2V's layout: the distilled experts beside the base
        weights = [mc.root / rel for rel in rels if (mc.root / rel).is_file()]
        if weights and given.get(name) is None:
            mc = with_dit_file(mc, weights[0], name)
    replaced = [n for n in mc.dit_names if mc.dit_source_for(n) is not None]
    if match.evidence.startswith("name") and len(replaced) == 1 and len(mc.dit_names) == 2:
        other = "dit_2" if replaced[0] == "dit" else "dit"
        warnings.warn(f"only the {expert_label(mc, replaced[0])} was given as a distilled file; the "
                      f"{expert_label(mc, other)} is the folder's, not distilled: give it with {DIT_FLAGS[other]}",
                      stacklevel=4)
    return mc


def refine(mc: ModelConfig, *, dit_path=None, preset: Optional[str] = None, hints: tuple[str, ...] = (),
           dit_path_2=None) -> ModelConfig:
    """The user's DiT files (--dit-path: the high-noise expert or TI2V's DiT; --dit-path-2: the
    low-noise expert), then a step-distilled preset (named, or recognised from the checkpoint)."""
    given = {"dit": dit_path, "dit_2": dit_path_2}
    _check_expert_names(mc, given)
    for name, path in given.items():
        if path is not None:
            mc = with_dit_file(mc, path, name)
    paths = [Path(p) for p in (dit_path, dit_path_2, *hints) if p]
    # LoRA / Lightning files are often named high_noise_model.safetensors: their folder names the release
    names = tuple(dict.fromkeys([p.name for p in paths] + [p.parent.name for p in paths if p.parent.name]
                                + [mc.root.name]))
    return _with_distill(mc, preset, names, given)


# ---------------------------------------------------------------- the rest


def geometry(mc: ModelConfig) -> Geometry:
    """Sides multiples of VAE stride x patch (16 for A14B, 32 for TI2V-5B), 4k+1 frames, the VAE's z_dim latents."""
    vae = mc.arch.vae
    st, s, p = vae.scale_factor_temporal, vae.scale_factor_spatial, mc.dit.patch_size[1]
    trained_size, trained_frames = TRAINED[mc.task]
    return Geometry(size_multiple=s * p, frame_step=st, latent_channels=vae.z_dim, stride=(st, s, s),
                    size_reason=f"VAE stride {s} x patch {p}", patch=mc.dit.patch_size,
                    max_positions=mc.dit.rope_max_seq_len, trained_size=trained_size, trained_frames=trained_frames)


# the largest (height, width) and frame count each model was trained on (the official SUPPORTED_SIZES
# and frame_num): A14B 1280x720 at 81 frames, TI2V-5B 1280x704 at 121
TRAINED = {"t2v": ((720, 1280), 81), "i2v": ((720, 1280), 81), "ti2v": ((704, 1280), 121)}


def memory(mc: ModelConfig, dtype: torch.dtype):
    """Wan2.1's activation formulas (lightx2v.models.wan.spec.memory: the DiT blocks are the same),
    with the Wan2.2 VAE's decoder width per output pixel: it decodes at 1/patch of the resolution
    (patchified), so its full-resolution width is decoder_dim / patch**2 per pixel."""
    from lightx2v.models.wan.spec import memory as wan21_memory
    from lightx2v.models.wan.vae22 import Wan22VAEConfig

    if isinstance(mc.arch.vae, Wan22VAEConfig):
        mc = dataclasses.replace(mc, arch=dataclasses.replace(mc.arch, vae=_Wan21Shape(mc.arch.vae)))
    return wan21_memory(mc, dtype)


@dataclasses.dataclass(frozen=True)
class _Wan21Shape:
    """The Wan2.2 VAE seen through the fields Wan2.1's memory formula reads."""

    vae: object

    @property
    def decoder_dim(self) -> float:
        return self.vae.decoder_dim * self.vae.dim_mult[0] / self.vae.patch_size**2

    dim = property(lambda self: self.vae.dim)
    dim_mult = property(lambda self: (1,))
    scale_factor_temporal = property(lambda self: self.vae.scale_factor_temporal)


def describe(mc: ModelConfig) -> dict:
    """What `info` prints beyond the generic fields: the experts and where they switch."""
    from lightx2v.models.wan.vae22 import Wan22VAEConfig
    from lightx2v.models.wan22.presets import size_name

    a = mc.arch
    vae = "Wan2.2 VAE" if isinstance(a.vae, Wan22VAEConfig) else "Wan2.1 VAE"
    out = {"size": size_name(mc.dit), "tokenizer": mc.files["tokenizer"], "boundary": a.boundary,
           "switch_step": a.switch_step,
           "vae": f"{vae} ({a.vae.z_dim} latent channels, {a.vae.scale_factor_temporal}x"
                  f"{a.vae.scale_factor_spatial}x{a.vae.scale_factor_spatial})"}
    if a.dit_2 is not None:
        out["dit_2"] = dataclasses.asdict(a.dit_2)
        rule = (f"steps 0-{a.switch_step - 1}, then the low-noise expert" if a.switch_step is not None
                else f"timesteps >= {a.boundary_timestep:g} (boundary {a.boundary:g}), then the low-noise expert")
        out["experts"] = f"dit = high noise, dit_2 = low noise; the high-noise expert runs {rule}"
    return out


def _pipeline():
    from lightx2v.pipelines.wan22 import Wan22Pipeline

    return Wan22Pipeline


def _presets() -> tuple[str, ...]:
    from lightx2v.models.wan22.distill import DISTILL_PRESETS

    return tuple(DISTILL_PRESETS)


WAN22 = register_family(FamilySpec(
    name="wan2.2", title="Wan2.2", tasks=layouts.TASKS, layouts=("official", "diffusers"),
    recognise=layouts.recognise, model_config=layouts.read_config, refine=refine, geometry=geometry,
    pipeline=_pipeline, components=COMPONENTS, dit_format=WAN_DIT_FORMAT, describe=describe,
    presets=_presets(), memory=memory, lora_experts=lora_experts, widths=wan21.widths,
))

__all__ = ["COMPONENTS", "WAN22", "Wan22Arch", "describe", "geometry", "refine", "with_dit_file"]
