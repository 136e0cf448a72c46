"""The family registry: every model family declares itself once, in a `FamilySpec`.

Design: the generic layers (api, detection, component loading, DiT files, convert, LoRA, `info`,
the CLI's choices) read specs and name no family. A family is a folder `models/<family>/` whose
`spec.py` builds one `FamilySpec`; adding a family is that folder, one line in `_BUILTIN` below,
and tests (docs/adding-a-model.md).

Each family also has a torch-free `manifest.py` (`MANIFEST = FamilyManifest(name, title, tasks,
presets, spec=<its spec module>)`), and `_BUILTIN` lists those: the CLI's choices (`all_tasks`,
`all_presets`) and `--help` read manifests only, so they import neither torch nor the family's
models; `families()` / `get_family()` / `recognise()` import the spec modules on first use, and
`register_family` checks that a spec says what its manifest says.

A spec says:
- how its checkpoints are recognised (`recognise(root)`: the layout's name, or the reason it is
  not this family — detection reports every family's reason when none matches);
- how a recognised folder becomes a `ModelConfig` (`model_config`): component files, architecture
  configs (every field a config file states is honoured or refused by name; omitted fields come
  from tensor shapes), sampling defaults;
- what may refine it (`refine`: a DiT file given by the user, a preset such as a step-distilled one);
- its components (`components`: build on meta, read the state dict, load dtype) and its DiT's file
  format (`dit_format`: key formats, config from shapes, the model class) for DiT files and convert;
- its request rules (`geometry(mc)`: size multiple, frame rule, latent channels and strides, the
  DiT's patch and position limit, the sizes and frames it was trained on);
- its activation memory (`memory(mc, dtype)`: a `MemoryProfile`, read by lightx2v.runtime.memory);
- its pipeline class (`pipeline.load(mc, engine)`), presets, and what `info` prints (`describe`);
- which LoRA paths name the expert they are for (`lora_experts`: Wan2.2-Lightning folders).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from lightx2v.errors import CheckpointError, InputError

if TYPE_CHECKING:  # annotations only: this module is imported by `lightx2v --help`, without torch
    import torch

# The families shipped with lightx2v: their manifest modules (each holds a MANIFEST naming the
# spec module whose import registers the family's FamilySpec).
_BUILTIN = (
    "lightx2v.models.wan.manifest", "lightx2v.models.wan22.manifest",
    # -- qwen-image (text-to-image; issue 18 step 2) --
    "lightx2v.models.qwen_image.manifest",
    # -- hunyuanvideo-1.5 (text-to-video; issue 17 step 3) --
    "lightx2v.models.hunyuan15.manifest",
)

_FAMILIES: dict[str, "FamilySpec"] = {}


@dataclass(frozen=True)
class Geometry:
    """What sizes a family can generate, and the latent grid they give.

    height and width: positive multiples of `size_multiple`; frames: `frame_step * k + 1`
    (`frame_step` 1: any positive count; images: `max_frames` 1); latents
    [1, latent_channels, (F - 1) / stride_t + 1, H / stride_h, W / stride_w].
    """

    size_multiple: int
    frame_step: int
    latent_channels: int
    stride: tuple[int, int, int]   # (t, h, w) pixels per latent cell
    max_frames: Optional[int] = None
    size_reason: str = ""          # why sides are multiples of size_multiple ("VAE stride 16 x patch 2"), for the error
    # what the range and memory checks read (lightx2v.runtime.memory):
    patch: tuple[int, int, int] = (1, 1, 1)         # latent cells per DiT token (t, h, w)
    max_positions: Optional[int] = None             # DiT positions per token-grid axis (its RoPE): a hard limit
    trained_size: Optional[tuple[int, int]] = None  # the largest (height, width) trained on, either orientation
    trained_frames: Optional[int] = None            # the most frames trained on

    def check(self, height: int, width: int, num_frames: int) -> None:
        """One-line InputError when the size or frame count does not fit this family."""
        m = self.size_multiple
        why = f"{self.size_reason}; " if self.size_reason else ""
        for name, v in (("height", height), ("width", width)):
            if v % m:
                raise InputError(f"{name} must be a positive multiple of {m} ({why}e.g. 480, 832), got {v!r}", field=name)
        if self.max_frames is not None and num_frames > self.max_frames:
            raise InputError(f"num_frames must be at most {self.max_frames} for this model, got {num_frames}",
                             field="num_frames")
        if (num_frames - 1) % self.frame_step:
            n = self.frame_step
            raise InputError(f"num_frames must be {n}k+1 (1, {n + 1}, ..., {20 * n + 1}), got {num_frames!r}",
                             field="num_frames")

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """diffusers' layout [1, C, T', H', W']."""
        st, sh, sw = self.stride
        return (1, self.latent_channels, (num_frames - 1) // st + 1, height // sh, width // sw)

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The DiT's token grid (t, h, w) for a request: the latent grid over the patch size."""
        _, _, t, h, w = self.latent_shape(num_frames, height, width)
        pt, ph, pw = self.patch
        return (-(-t // pt), -(-h // ph), -(-w // pw))


@dataclass(frozen=True)
class MemoryProfile:
    """The activation memory a family's models need, in bytes, at one compute dtype (one sample).

    lightx2v.runtime.memory adds the weights (read off the meta-built components) and compares the
    sum with what the device has; its docstring gives how the family's numbers were measured.
    """

    token_bytes: float            # DiT: peak activations per token (blocks run one after another)
    attention_heads: int          # DiT self-attention heads (a math attention holds heads x tokens^2 scores)
    pixel_bytes: float            # VAE decode (encode): working set per output pixel of one time chunk
    video_bytes: float = 36.0     # per pixel-frame: the decoded fp32 RGB video and two temporaries
    text_bytes: float = 0.0       # text encoder activations for one prompt
    chunk_token_bytes: float = 0.0  # DiT with token chunking (EngineConfig.chunk_tokens): per token, besides one chunk's
    context_bytes: float = 0.0    # every block's cross-attention K/V for one prompt (kept by context_kv)
    # -- hunyuanvideo-1.5 (issue 17): a VAE that tiles by default and decodes the whole clip at once --
    vae_tile: Optional[int] = None  # the side (px) of the tiles the family's VAE decodes in without vae_tiling
    vae_whole_clip: bool = False    # pixel_bytes is per pixel-frame: every frame of a tile is decoded at once


@dataclass(frozen=True)
class ComponentSpec:
    """One weight-holding component of a family (the DiT is loaded through `dit_format` instead).

    build(mc) -> module on the meta device; read(mc) -> state dict in the module's own names (mmap);
    dtype(engine_dtype) -> the dtype it is loaded in (the VAE stays fp32, CLIP runs fp16 ...);
    needed(mc): whether this checkpoint has it. (Whether it takes an attention backend is read off
    the built module: a submodule with `attn_backend`.)
    """

    name: str
    what: str                                   # for messages: "text encoder", "VAE" ...
    build: Callable[[Any], torch.nn.Module]
    read: Callable[[Any], Mapping[str, torch.Tensor]]
    dtype: Callable[[torch.dtype], torch.dtype] = lambda dt: dt
    needed: Callable[[Any], bool] = lambda mc: True


@dataclass(frozen=True)
class FamilySpec:
    """Everything the generic layers need to know about one model family (see the module docstring)."""

    name: str                                   # "wan2.1"
    title: str                                  # "Wan2.1"
    tasks: tuple[str, ...]
    layouts: tuple[str, ...]
    recognise: Callable[[Path], "str | Reason"]
    model_config: Callable[[Path, str], Any]    # (root, layout) -> ModelConfig
    refine: Callable[..., Any]                  # (mc, dit_path=, preset=, hints=) -> ModelConfig
    geometry: Callable[[Any], Geometry]         # mc -> Geometry
    pipeline: Callable[[], type]                # lazily: the pipeline class (imports torch models)
    components: tuple[ComponentSpec, ...]
    dit_format: Any                             # a DitFormat (see lightx2v.loading.dit_files)
    describe: Callable[[Any], dict]             # mc -> what `info` prints beyond the generic fields
    presets: tuple[str, ...] = ()
    # (mc, compute dtype) -> MemoryProfile: what runtime/memory.py estimates a request from (None: no estimate)
    memory: Optional[Callable[[Any, Any], MemoryProfile]] = None
    # path -> ({expert: LoRA file}, the notice saying what was assumed) when a LoRA path names the
    # expert(s) of a several-DiT model it is for (Wan2.2: a Lightning folder of one file per expert,
    # a file named `..._high_noise_lora_...`); None: a plain LoRA, for every DiT. Read by
    # lightx2v.loading.lora_plan.resolve_loras before any weight is read.
    lora_experts: Optional[Callable[[Path], Optional[tuple[Mapping[str, Path], str]]]] = None
    # (DiT width, the released models of that width): what `info` names a LoRA file's model by
    widths: tuple[tuple[int, str], ...] = ()

    def component(self, name: str) -> ComponentSpec:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True)
class Reason:
    """Why a folder is not a checkpoint of one family (shown when no family matches)."""

    text: str


def register_family(spec: FamilySpec) -> FamilySpec:
    if spec.name in _FAMILIES and _FAMILIES[spec.name] is not spec:
        raise ValueError(f"family {spec.name!r} is registered twice")
    _check_manifest(spec)
    _FAMILIES[spec.name] = spec
    return spec


def _load_builtin() -> None:
    for m in manifests():
        importlib.import_module(m.spec)


def families() -> tuple[FamilySpec, ...]:
    """All registered families, in registration order."""
    _load_builtin()
    return tuple(_FAMILIES.values())


def get_family(name: str) -> FamilySpec:
    _load_builtin()
    if name not in _FAMILIES:
        raise CheckpointError(f"unknown model family {name!r}; known: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def all_tasks() -> tuple[str, ...]:
    """Every task of every family (the CLI's --task choices), read from manifests: no torch."""
    seen: dict[str, None] = {}
    for f in _declared():
        seen.update(dict.fromkeys(f.tasks))
    return tuple(seen)


def all_presets() -> tuple[str, ...]:
    """Every preset of every family (the CLI's --preset names), read from manifests: no torch."""
    return tuple(p for f in _declared() for p in f.presets)


def recognise(root: Path) -> tuple[FamilySpec, str]:
    """(family, layout) of a model folder; a CheckpointError listing every family's reason otherwise."""
    reasons = []
    for spec in families():
        got = spec.recognise(root)
        if isinstance(got, str):
            return spec, got
        reasons.append(f"{spec.title}: {got.text}")
    raise CheckpointError(f"{root} is not a model folder we know ({'; '.join(reasons)})")


# ---------------------------------------------------------------- manifests (torch-free)


@dataclass(frozen=True)
class FamilyManifest:
    """What the CLI needs to know about a family before anything heavy is imported.

    `spec` is the module whose import registers the family's FamilySpec; name, title, tasks and
    presets must equal the spec's (checked when it registers)."""

    name: str
    title: str
    tasks: tuple[str, ...]
    presets: tuple[str, ...]
    spec: str


def manifests() -> tuple[FamilyManifest, ...]:
    """The manifests of the built-in families, in `_BUILTIN` order (imports no spec module)."""
    return tuple(importlib.import_module(module).MANIFEST for module in _BUILTIN)


def _declared() -> list:
    """Manifests of the built-in families, then the families registered by others (`register_family`
    outside `_BUILTIN`): whatever has name, tasks and presets."""
    found = list(manifests())
    names = {m.name for m in found}
    return found + [f for f in _FAMILIES.values() if f.name not in names]


def _check_manifest(spec: FamilySpec) -> None:
    """A built-in family's spec must say what its manifest says (the CLI offered the manifest's choices)."""
    for m in manifests():
        if m.name != spec.name:
            continue
        pairs = {"title": (m.title, spec.title), "tasks": (tuple(m.tasks), tuple(spec.tasks)),
                 "presets": (tuple(m.presets), tuple(spec.presets))}
        diff = [f"{field} {a!r} vs {b!r}" for field, (a, b) in pairs.items() if a != b]
        if diff:
            raise ValueError(f"family {spec.name!r}: its manifest and its spec differ (manifest vs spec): "
                             + "; ".join(diff))
