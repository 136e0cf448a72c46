"""How to run a model: `EngineConfig` (device, dtype, attention per role, and one typed
sub-config per engine transform, applied in order by lightx2v.runtime.engine), with the device and
dtype parsing it uses. Re-exported by lightx2v.config, the three-layer configuration's one import
point (DESIGN principle 6); environment variables are never read here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from lightx2v.choices import QUANTIZED_ATTENTION
from lightx2v.errors import InputError

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
          "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """'bf16' | 'fp16' | 'fp32' (or a torch.dtype) -> torch.dtype."""
    if isinstance(value, torch.dtype):
        if value not in DTYPES.values():
            raise InputError(f"dtype {value} is not supported; expected one of bf16, fp16, fp32")
        return value
    try:
        return DTYPES[str(value).lower()]
    except KeyError:
        raise InputError(f"unknown dtype {value!r}; expected one of bf16, fp16, fp32") from None


@dataclass(frozen=True)
class QuantConfig:
    """`apply_quant`: quantize the DiT's declared linears with one scheme: "w8a8-int8" / "w8a8-fp8"
    (8-bit activations and GEMM) or "w8a16-int8" / "w8a16-fp8" (weight-only, dequantized)."""

    scheme: Optional[str] = None


@dataclass(frozen=True)
class LoraConfig:
    """LoRAs: (path, strength) pairs, merged into the weights or kept as run-time hooks (`set_lora`).

    `loras` go to every DiT (both experts of a two-expert model). `per_dit` gives LoRAs to one DiT
    only: its key is a DiT's component name ("dit", "dit_2") or an expert name its pipeline declares
    (`expert_components`; Wan2.2 A14B: "high" -> "dit", "low" -> "dit_2"). Before loading,
    lightx2v.loading.lora_plan.resolve_loras checks the keys against the model and lets the family
    route paths that name their expert (a Wan2.2-Lightning folder, LightX2V's `..._high_noise_lora_...`
    files) from `loras` into `per_dit`.
    """

    loras: tuple[tuple[str, float], ...] = ()
    mode: str = "merge"                 # "merge" | "dynamic"
    allow_unmatched: bool = False
    per_dit: Mapping[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("merge", "dynamic"):
            raise InputError(f"lora_mode must be 'merge' or 'dynamic', got {self.mode!r}")
        if not isinstance(self.per_dit, Mapping):
            raise InputError(f"per_dit must map a DiT or expert name to (path, strength) pairs, got {self.per_dit!r}")
        pairs = (lambda items: tuple((str(p), s) for p, s in items))
        object.__setattr__(self, "loras", pairs(self.loras))
        # a plain dict of tuples (a copy: the caller's dict is not shared), so the config pickles
        object.__setattr__(self, "per_dit", {str(k): pairs(v) for k, v in self.per_dit.items() if v})

    @property
    def paths(self) -> tuple[str, ...]:
        """Every LoRA path, for every DiT or one (file checks, name hints)."""
        return tuple(p for p, _ in self.loras) + tuple(p for items in self.per_dit.values() for p, _ in items)

    @property
    def count(self) -> int:
        """How many LoRAs were given (one given for every DiT counts once)."""
        return len(self.loras) + sum(len(v) for v in self.per_dit.values())


@dataclass(frozen=True)
class CompileConfig:
    """Regional `torch.compile` of the model's declared repeated blocks (each block compiled once,
    reused by all: a short first call, the speed of a whole-model compile)."""

    enabled: bool = False
    mode: Optional[str] = None          # torch.compile mode: None, "max-autotune-no-cudagraphs" ...
    backend: str = "inductor"
    fullgraph: bool = False
    dynamic: Optional[bool] = None
    # also the VAE decoder's blocks (lightx2v.runtime.vae_compile; branch vae): off by default
    vae: bool = False


@dataclass(frozen=True)
class OffloadConfig:
    """Where the DiTs' weights live while they are not used (the engine's placement step).

    granularity None (off); "model" (lightx2v.runtime.offload): the DiTs in host memory, only the one
    running on the device; "block" / "phase" (lightx2v.runtime.block_offload): the DiTs' blocks in
    (pinned) host memory, copied one block (or one phase of a block: self-attention, cross-attention,
    FFN) at a time into `num_buffers` device buffers reused for every block, the next one copied on a
    side stream while the current one computes; everything outside the blocks stays on the device.
    `prefetch`: model: copy the next DiT of a two-expert model during the step before the switch;
    block / phase: copy the next block(s) ahead (off: each copy waited for when it is needed).
    `num_buffers`: block / phase: device buffers (at least 2: one computing, one being filled).
    `lazy_load` (block / phase): the blocks are not copied into host memory but read from the
    checkpoint's memory-mapped files, ahead of use, by `num_disk_workers` threads into a few pinned
    host buffers (lightx2v.runtime.lazy_load): host memory holds those, not the model."""

    granularity: Optional[str] = None
    prefetch: bool = True
    num_buffers: int = 2
    lazy_load: bool = False
    num_disk_workers: int = 2

    def __post_init__(self) -> None:
        if self.granularity not in OFFLOAD_GRANULARITIES:
            raise InputError(f"offload must be one of {', '.join(str(g) for g in OFFLOAD_GRANULARITIES[1:])} "
                             f"(or None: off), got {self.granularity!r}", field="offload")
        if isinstance(self.num_buffers, bool) or not isinstance(self.num_buffers, int) or self.num_buffers < 2:
            raise InputError(f"offload_buffers must be an integer >= 2 (one buffer computing while the next is "
                             f"filled), got {self.num_buffers!r}", field="offload_buffers")
        if self.lazy_load and self.granularity not in ("block", "phase"):
            raise InputError(f"lazy_load needs offload 'block' or 'phase', got offload {self.granularity!r}",
                             field="lazy_load")
        workers = self.num_disk_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InputError(f"num_disk_workers must be an integer >= 1, got {workers!r}", field="num_disk_workers")


OFFLOAD_GRANULARITIES = (None, "model", "block", "phase")
MIN_CHUNK_TOKENS = 256  # below this the GEMMs of a chunk are too small to keep a GPU busy


# ---- feature cache (lightx2v.runtime.cache) --------------------------------------------------------
CACHE_METHODS = ("teacache", "magcache", "firstblock", "taylorseer")
# the options each method reads (None: the method's default for the model, docs/caching.md)
CACHE_OPTIONS = {
    "teacache": ("threshold", "model", "ret_steps"),
    "magcache": ("threshold", "model", "max_skips", "retention"),
    "firstblock": ("threshold",),
    "taylorseer": ("interval", "warmup", "order"),
}


@dataclass(frozen=True)
class CacheConfig:
    """The feature cache: per step and CFG branch, run the DiT's block stack or reuse (forecast) its
    stored output (lightx2v.runtime.cache; docs/caching.md). method None: off. `threshold` 0 runs every
    forward; `model` names the published coefficient set (t2v-1.3b, t2v-14b, i2v-480p, i2v-720p; None:
    from the checkpoint); `ret_steps` (teacache: the retention-steps variant on the time projection);
    `max_skips` / `retention` (magcache's K and retention ratio); `interval` / `warmup` / `order`
    (taylorseer). Also given as "teacache" or "teacache:threshold=0.2,model=t2v-14b" (`parse`)."""

    method: Optional[str] = None
    threshold: Optional[float] = None
    model: Optional[str] = None
    ret_steps: Optional[bool] = None
    max_skips: Optional[int] = None
    retention: Optional[float] = None
    interval: Optional[int] = None
    warmup: Optional[int] = None
    order: Optional[int] = None

    def __post_init__(self) -> None:
        if self.method is None:
            given = [k for k in _CACHE_FIELDS if getattr(self, k) is not None]
            if given:
                raise InputError(f"cache options {', '.join(given)} are given without a cache method; "
                                 f"expected one of {', '.join(CACHE_METHODS)}", field="cache")
            return
        if self.method not in CACHE_METHODS:
            raise InputError(f"cache method must be one of {', '.join(CACHE_METHODS)}, got {self.method!r}",
                             field="cache")
        allowed = CACHE_OPTIONS[self.method]
        wrong = [k for k in _CACHE_FIELDS if getattr(self, k) is not None and k not in allowed]
        if wrong:
            raise InputError(f"cache {self.method} takes {', '.join(allowed)}; got {', '.join(wrong)}", field="cache")
        for name, low, kind in (("threshold", 0.0, float), ("retention", 0.0, float), ("max_skips", 0, int),
                                ("interval", 1, int), ("warmup", 0, int), ("order", 1, int)):
            v = getattr(self, name)
            if v is None:
                continue
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or float(v).is_integer())
            if not ok or not math.isfinite(v) or v < low:
                raise InputError(f"cache {name} must be {'an integer' if kind is int else 'a number'} >= {low:g}, "
                                 f"got {v!r}", field="cache")
            object.__setattr__(self, name, kind(v))
        if self.retention is not None and self.retention > 1:
            raise InputError(f"cache retention is a fraction of the steps, 0 to 1; got {self.retention!r}", field="cache")
        if self.order is not None and self.order > 2:
            raise InputError(f"cache order (taylorseer) must be 1 or 2, got {self.order!r}", field="cache")

    @property
    def enabled(self) -> bool:
        return self.method is not None

    @classmethod
    def parse(cls, value) -> "CacheConfig":
        """None | "teacache" | "teacache:threshold=0.2,model=t2v-14b" | {"method": ..., ...} | CacheConfig."""
        if value is None or isinstance(value, CacheConfig):
            return value or cls()
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"method", *_CACHE_FIELDS})
            if unknown:
                raise InputError(f"cache: unknown option(s) {', '.join(unknown)}; expected method and "
                                 f"{', '.join(_CACHE_FIELDS)}", field="cache")
            return cls(**dict(value))
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"cache must be a method name ({', '.join(CACHE_METHODS)}), 'METHOD:key=value,...' "
                             f"or a mapping; got {value!r}", field="cache")
        method, _, rest = value.strip().partition(":")
        opts: dict = {"method": method.strip()}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, text = part.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in _CACHE_FIELDS:
                raise InputError(f"cache {value!r}: expected METHOD[:key=value,...] with keys among "
                                 f"{', '.join(_CACHE_FIELDS)}; got {part!r}", field="cache")
            opts[key] = _cache_value(key, text.strip(), value)
        return cls(**opts)


_CACHE_FIELDS = ("threshold", "model", "ret_steps", "max_skips", "retention", "interval", "warmup", "order")


def _cache_value(key: str, text: str, whole: str):
    if key == "model":
        return text
    if key == "ret_steps":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise InputError(f"cache {whole!r}: ret_steps must be true or false, got {text!r}", field="cache")
    try:
        return float(text) if key in ("threshold", "retention") else int(text)
    except ValueError:
        raise InputError(f"cache {whole!r}: {key} must be a number, got {text!r}", field="cache") from None


# ---- several GPUs (lightx2v.runtime.parallel; docs/parallel.md) ------------------------------------


@dataclass(frozen=True)
class ParallelConfig:
    """How the ranks of a torchrun launch share one generation (lightx2v.runtime.parallel).

    `cfg_parallel`: the conditional and unconditional CFG branches on two ranks, combined once per
    step; `ulysses` N: the DiT's tokens split over N ranks, an all-to-all of heads around every
    self-attention (N divides the heads); `ring` M: the sequence split over M more ranks, attention
    exchanged around a ring (with Ulysses: Ulysses inside, ring across); `vae_parallel`: the VAE
    decode split spatially over every rank. The product (2 if cfg_parallel) x ulysses x ring must be
    the launch's world size (checked where the world is known: lightx2v.runtime.parallel.check_world)."""

    cfg_parallel: bool = False
    ulysses: int = 1
    ring: int = 1
    vae_parallel: bool = False

    def __post_init__(self) -> None:
        for name in ("ulysses", "ring"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be an integer >= 1 (ranks), got {v!r}", field=name)
        for name in ("cfg_parallel", "vae_parallel"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}", field=name)

    @property
    def cfg(self) -> int:
        """Ranks of the CFG group: 2 with cfg_parallel, else 1."""
        return 2 if self.cfg_parallel else 1

    @property
    def sequence(self) -> int:
        """Ranks of one sequence-parallel group: ulysses x ring."""
        return self.ulysses * self.ring

    @property
    def world(self) -> int:
        """The ranks this config needs: cfg x ulysses x ring."""
        return self.cfg * self.sequence

    @property
    def enabled(self) -> bool:
        return self.world > 1 or self.vae_parallel


@dataclass(frozen=True)
class EngineConfig:
    """How to run: where, in which precision, and every transform (lightx2v.runtime.engine applies
    them in one place, in one order). A sub-config per transform; more join as they land."""

    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    # one backend name for every attention, or one per role: {"self": ..., "cross": ...} (the DiT's
    # self- and cross-attention; encoders take "self"), also written "self=sage8,cross=sdpa_cudnn"
    attention: str | Mapping[str, str] = "auto"
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    # where components are loaded before the engine places them: None = the target device
    staging: Optional[str] = None
    # CFG branches: "sequential" (two calls of batch 1, as the references) or "batched" (one call of batch 2)
    cfg_mode: str = "sequential"
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    # the VAE's precision (encode and decode); None: the family's (fp32, as the references decode).
    # bf16 decodes 480P x 81 frames in 1.79 s instead of 2.71 s on an H200 at a relative error of
    # 1.5e-2 against strict fp32 (TF32 convolutions, the fp32 path: 7.2e-3); docs/benchmarks.md
    vae_dtype: Optional[torch.dtype] = None
    # each DiT's cross-attention K/V computed once per generation, not at every step (bit-identical;
    # ~0.4 GB per CFG branch at Wan 14B; lightx2v.runtime.context_kv)
    context_kv: bool = True
    # the text encoder's / image encoder's block linears quantized with a lightx2v.quant scheme (after
    # loading; their embeddings, norms and position bias stay): umt5-xxl 11 GB -> ~5.7 GB in 8 bits
    quant_text_encoder: Optional[str] = None
    quant_image_encoder: Optional[str] = None
    # the VAE decoder in channels-last(-3d) layout (WanVAE.set_memory_format); None: on CUDA (H200,
    # 480P x 81 frames: fp32 2.50 -> 2.32 s, bf16 1.63 -> 1.45 s, less memory; docs/benchmarks.md)
    vae_channels_last: Optional[bool] = None
    # mp4 files encoded while the VAE decodes (lightx2v.io.stream); off: encoded after the decode
    stream_save: bool = True
    # the DiT blocks' elementwise ops (lightx2v.ops.fused): "torch" (the reference), "triton" (fused
    # kernels), "auto" (triton where it runs on the device, else torch)
    kernels: str = "torch"
    # self-attention q, k, v as one GEMM (lightx2v.runtime.fuse; views, no second copy of the
    # weights); off by default: no gain measured at Wan 14B on the H200 (docs/benchmarks.md)
    fuse_qkv: bool = False
    # the text encoder, the image encoder and the VAE kept in (pinned) host memory and placed on the
    # device only while their stage runs (lightx2v.runtime.offload.ModelOffload; a small GPU)
    offload_encoders: bool = False
    # where the text encoder runs: None (the engine's device) or "cpu" (umt5-xxl never on the GPU)
    text_encoder_device: Optional[str] = None
    # the feature cache (lightx2v.runtime.cache): off, or a method and its options (CacheConfig.parse's forms)
    cache: CacheConfig = field(default_factory=CacheConfig)
    # the VAE's decode and encode in overlapping spatial tiles of vae_tile_size pixels (overlap a
    # quarter of it: 256 / 64 as diffusers), blended linearly: the VAE's memory bounded by the tile,
    # not the frame (lightx2v.models.wan.vae_tiling); a frame that fits in one tile is not tiled
    vae_tiling: bool = False
    vae_tile_size: int = 256
    # the DiT blocks' token-wise parts (projections, norms, RoPE, cross-attention, FFN) run this many
    # tokens at a time, the residual written in place (lightx2v.runtime.chunking): activation memory
    # ~12 x dim bytes a token plus one chunk's, instead of ~30 x dim (bf16); 0: off
    chunk_tokens: int = 0
    # several GPUs under torchrun: CFG / Ulysses / ring parallel and the parallel VAE decode
    # (lightx2v.runtime.parallel; the engine's parallel step); the default runs on one device
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention", parse_attention(self.attention))
        object.__setattr__(self, "cache", CacheConfig.parse(self.cache))
        if isinstance(self.vae_dtype, str):
            object.__setattr__(self, "vae_dtype", parse_dtype(self.vae_dtype))
        if self.offload is None or isinstance(self.offload, str):  # shorthand: offload="model"
            object.__setattr__(self, "offload", OffloadConfig(self.offload))
        # shorthand: quant="w8a8-int8", compile=True
        if self.quant is None or isinstance(self.quant, str):
            object.__setattr__(self, "quant", QuantConfig(self.quant))
        if isinstance(self.compile, bool):
            object.__setattr__(self, "compile", CompileConfig(enabled=self.compile))
        if self.offload.granularity == "phase" and self.compile.enabled:
            raise InputError("offload 'phase' cannot be combined with compile: its phase switches run inside each "
                             "block's forward (use offload 'block' with compile)", field="offload")
        if self.cfg_mode not in ("sequential", "batched"):
            raise InputError(f"cfg_mode must be 'sequential' or 'batched', got {self.cfg_mode!r}")
        if self.parallel.cfg_parallel and self.cfg_mode == "batched":  # (parallel) one branch per rank
            raise InputError("cfg_parallel runs one CFG branch per rank; it cannot be combined with cfg_mode "
                             "'batched' (both branches in one call)", field="cfg_mode")
        # under ring attention each block of keys is computed exactly by the ring's own kernel
        # (lightx2v.runtime.parallel.ring): an 8-bit self-attention is refused, not silently not honoured
        ring_refuses = self.attention_for("self") if self.parallel.ring > 1 else None
        if ring_refuses in QUANTIZED_ATTENTION:
            raise InputError(f"attention self={ring_refuses} cannot run under ring attention: the ring computes each "
                             "block of keys exactly (FA3 or SDPA with its log-sum-exp), not with an 8-bit kernel; split the "
                             "sequence with ulysses instead, or keep a lossless self-attention (auto)", field="attention")
        if self.kernels not in ("torch", "triton", "auto"):
            raise InputError(f"kernels must be 'torch', 'triton' or 'auto', got {self.kernels!r}", field="kernels")
        if self.text_encoder_device not in (None, "cpu"):
            raise InputError(f"text_encoder_device must be 'cpu' (or None: the engine's device), got "
                             f"{self.text_encoder_device!r}", field="text_encoder_device")
        size = self.vae_tile_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 128 or size % 64:
            raise InputError(f"vae_tile_size must be a multiple of 64 pixels from 128 (the overlap, a quarter, "
                             f"is then whole latent pixels of either Wan VAE), got {size!r}", field="vae_tile_size")

        chunk = self.chunk_tokens
        if isinstance(chunk, bool) or not isinstance(chunk, int) or (chunk != 0 and chunk < MIN_CHUNK_TOKENS):
            raise InputError(f"chunk_tokens must be 0 (off) or an integer >= {MIN_CHUNK_TOKENS}, got {chunk!r}",
                             field="chunk_tokens")

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def attention_for(self, role: str) -> str:
        """The backend name asked for attention of `role` ("self" or "cross")."""
        return self.attention if isinstance(self.attention, str) else self.attention[role]

    def staging_device(self) -> torch.device:
        """Where components are loaded before placement: `staging`, else the target device, except with block /
        phase offload, encoder offload or the text encoder on the CPU: the host (the device may be far too
        small to hold the DiT even once, and an encoder that is to live in host memory is read there)."""
        if self.staging is not None:
            return resolve_device(self.staging)
        small = self.offload.granularity in ("block", "phase") or self.offload_encoders or self.text_encoder_device
        return torch.device("cpu") if small else self.torch_device()


ATTENTION_ROLES = ("self", "cross")


def parse_attention(value) -> str | dict[str, str]:
    """An attention choice: one name (kept as a str) or a backend per role -> {"self": .., "cross": ..}
    (a role not given: "auto"). Accepts a mapping or "self=NAME,cross=NAME"; names are checked
    against the registry later (lightx2v.ops.attention.resolve_attention), roles here."""
    if isinstance(value, str) and "=" not in value:
        if not value.strip():
            raise InputError("attention must name a backend (auto, ...) or self=NAME,cross=NAME, got ''", field="attention")
        return value
    if isinstance(value, str):
        pairs = [part.partition("=") for part in value.split(",") if part.strip()]
        if any(not sep or not name.strip() for _, sep, name in pairs):
            raise InputError(f"attention {value!r}: expected NAME or self=NAME,cross=NAME", field="attention")
        value = {role.strip(): name.strip() for role, _, name in pairs}
    if not isinstance(value, Mapping):
        raise InputError(f"attention must be a backend name or a mapping of roles to names, got {value!r}",
                         field="attention")
    unknown = sorted(set(value) - set(ATTENTION_ROLES))
    if unknown:
        raise InputError(f"attention roles are {' and '.join(ATTENTION_ROLES)}, got {', '.join(map(repr, unknown))}",
                         field="attention")
    roles = {role: str(value.get(role, "auto")) for role in ATTENTION_ROLES}
    return roles["self"] if len(set(roles.values())) == 1 else roles


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' | 'cuda[:i]' | 'cpu' -> torch.device; anything this machine cannot run on is one
    InputError naming the devices it has. 'auto' without CUDA warns that the CPU is slow."""
    import warnings

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(cuda)] if cuda else [])
    here = f"this machine has: {', '.join(have)}"
    if name == "auto":
        if cuda:
            return torch.device("cuda")
        warnings.warn("no CUDA device found; running on the CPU (slow)", UserWarning, stacklevel=2)
        return torch.device("cpu")
    try:
        dev = name if isinstance(name, torch.device) else (
            torch.device(name) if isinstance(name, str) and name.strip() == name else None)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None:
        raise InputError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N ({here})", field="device")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {name!r} is not supported (lightx2v runs on CUDA GPUs and the CPU); {here}",
                         field="device")
    if dev.type == "cuda" and not cuda:
        raise InputError(f"device {name!r} was asked for but CUDA is not available; {here} "
                         "(use --device cpu, slow, or a GPU machine)", field="device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= cuda:
        raise InputError(f"device {name!r} does not exist; {here}", field="device")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise InputError(f"device {name!r} does not exist; {here}", field="device")
    return dev
