"""Converting a DiT checkpoint to another layout, dtype or quantization, one tensor at a time.

Design: `convert_dit(src, dst, ...)` reads any DiT source `inspect_dit_source` reads (official or
diffusers folders, single files in official / ComfyUI / diffusers keys, indexed shards, block-split
folders, pre-quantized files) and writes one of three layouts:

layout     files                                                           keys
official   diffusion_pytorch_model.safetensors, or -0000i-of-0000N shards   official
           + diffusion_pytorch_model.safetensors.index.json; config.json
           (official format) when the source gives a config
diffusers  the same file names + config.json of the diffusers transformer   diffusers
blocks     block_<i>.safetensors (blocks.<i>.*) + non_block.safetensors;   official
           config.json (official format) when the source gives a config

Streaming, so a 14B model converts in a few hundred MB: the whole output is planned first from
the safetensors headers (each output tensor's name, shape and dtype, so every shard's header is
known before its data), then each tensor is read on its own, merged / cast / quantized, and
appended to its shard with `write_safetensors`, a writer of the safetensors format that writes a
tensor's bytes as they come (safetensors' own `save_file` needs the whole shard as a dict). A
source file is opened anew for every tensor: safetensors maps the whole file, and the pages a
kept handle has touched stay in the process's RSS until it is closed (reading a 2 GB file
through one handle peaked at 2.2 GB RSS, reopening per tensor at 0.25 GB). `.pth` sources are
mapped once by `torch.load(mmap=True)`; their touched pages do count in RSS.

Per tensor, in this order: LoRA deltas (`strength * delta`, summed in fp32 in the order given,
as `merge_loras_` does at load), then quantization (`--quant`: the linears `apply_quant` selects
by default; a pre-quantized layer that a LoRA targets is dequantized, merged and requantized
with its own scheme), then the dtype: without `dtype` every tensor keeps the source's dtype (so a
conversion is bit-exact); with `dtype` floating tensors are cast to it, except the ones
the model's `_keep_in_fp32` names (Wan: time embedding, modulations, norms), which are written in fp32
because the loader computes them in fp32 anyway. Quantized weights keep int8 / float8 and scales
are always written in fp32; NVFP4 (`--quant w4a4-nvfp4`) writes LightX2V's tensors as its
converter does (packed uint8 weight, e4m3 swizzled `weight_scale`, fp32 `weight_global_scale`),
and a pre-quantized NVFP4 source is copied tensor by tensor (a LoRA cannot be merged into it here).

Atomic: everything goes to a temp folder beside `dst`, renamed to `dst` at the end; any error or
Ctrl-C removes it, so a failed conversion leaves nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from lightx2v.choices import CONVERT_LAYOUTS as LAYOUTS, DTYPES, QUANT_CHOICES  # noqa: F401 (torch-free: --help)
from lightx2v.io.atomic import check_new_folder, note_removed, place_folder, test_pause
from lightx2v.config import parse_dtype
from lightx2v.errors import CheckpointError, InputError
from lightx2v.loading.dit_files import (
    QUANT_LEAVES, DitSource, TensorInfo, dit_key_from_file, inspect_dit_source,
    read_safetensors_header,
)
from lightx2v.loading.safetensors_io import write_safetensors
from lightx2v.loading.lora import LoraWeights, load_lora, lora_strength, report_unmatched
from lightx2v.loading.state_dict import read_tensors
from lightx2v.quant import QuantLinear, QuantScheme, apply_quant, get_scheme

DEFAULT_SHARD_SIZE = 5 * 10**9  # bytes; memory use does not depend on it (tensors stream)
WEIGHTS = "diffusion_pytorch_model"
_BLOCK = re.compile(r"blocks\.(\d+)\.")

Log = Callable[[str], None]


# ---------------------------------------------------------------- the source


def _parse_config(path: Path, fmt) -> Optional[Any]:
    """The family's DiT config.json in either format; None for a config of something else."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"cannot read {path} as JSON") from None
    if not isinstance(raw, dict):
        return None
    try:
        return fmt.parse_config(raw)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def official_to_diffusers_key(key: str, table: Mapping[str, str]) -> str:
    """Diffusers name of a model key (`table`: the family's `diffusers_key_table`); a quantized layer's
    `weight_scale` (and NVFP4's global scales) follow its weight (`...to_q.weight_scale`, as
    dit_files reads them back)."""
    module, _, leaf = key.rpartition(".")
    if leaf in QUANT_LEAVES and f"{module}.weight" in table:
        return table[f"{module}.weight"][: -len("weight")] + leaf
    if key not in table:
        raise CheckpointError(f"DiT tensor {key} has no name in the diffusers layout")
    return table[key]


def given_config(path: Path, source: DitSource) -> Optional[Any]:
    """The DiT config.json the source comes with (official or diffusers format), or None.

    A folder's config must describe its weights (else an error); the config.json beside a single
    file or index is used only if it does (a models folder may hold other models' configs)."""
    folder = path if path.is_dir() else path.parent
    if path.is_dir() and (path / "model_index.json").is_file() and (path / "transformer").is_dir():
        folder = path / "transformer"
    if not (folder / "config.json").is_file():
        return None
    try:
        cfg = _parse_config(folder / "config.json", source.format)
        if cfg is not None:
            source.format.check_matches(source.config, cfg, str(path))
    except CheckpointError:
        if path.is_dir():
            raise
        return None
    return cfg


class _Reader:
    """Official-keyed tensors of a source, read one at a time (see the module docstring)."""

    def __init__(self, source: DitSource) -> None:
        self.where: dict[str, tuple[Path, str]] = {}  # official key -> (file, key in the file)
        self.infos: dict[str, TensorInfo] = {}
        self._mapped: dict[Path, dict[str, Tensor]] = {}  # .pth files, mapped once
        for f in source.files:
            infos = read_safetensors_header(f) if f.suffix == ".safetensors" else {
                k: (tuple(v.shape), v.dtype) for k, v in self._mapped.setdefault(f, read_tensors(f)).items()}
            for k, info in infos.items():
                if k.startswith(source.prefix) and (nk := dit_key_from_file(k[len(source.prefix):], source.key_format, source.format)):
                    self.where[nk], self.infos[nk] = (f, k), info

    def get(self, key: str) -> Tensor:
        from safetensors import safe_open

        f, k = self.where[key]
        if f in self._mapped:
            return self._mapped[f][k]
        try:
            with safe_open(str(f), framework="pt") as handle:
                return handle.get_tensor(k)
        except Exception as exc:  # safetensors raises its own types; name the file
            raise CheckpointError(f"cannot read tensor {k} of {f} ({exc}); is the file complete?") from exc


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class OutTensor:
    key: str  # official key
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class Unit:
    """Output tensors made from one read. kind: 'tensor' (one tensor), 'quantize' (a float
    weight -> weight + weight_scale (+ the scheme's other tensors)), 'quantized' (a pre-quantized
    weight + its scale), 'copy' (a tensor of a pre-quantized packed layer, written as it is)."""

    kind: str
    key: str  # the tensor read (official key)
    outputs: tuple[OutTensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(o.nbytes for o in self.outputs)


def _natural(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def quant_targets(fmt, cfg: Any, scheme: QuantScheme) -> frozenset[str]:
    """The linears the DiT declares quantizable (found on a meta-built model)."""
    with torch.device("meta"):
        model = fmt.build(cfg)
    apply_quant(model, scheme)
    return frozenset(n for n, m in model.named_modules() if isinstance(m, QuantLinear))


def plan_units(
    infos: Mapping[str, TensorInfo], source: DitSource, *, quant: Optional[QuantScheme],
    targets: frozenset[str], dtype: Optional[torch.dtype],
) -> list[Unit]:
    """Every output tensor with its shape and dtype, in natural key order (blocks in order)."""
    keep = source.format.model_class._keep_in_fp32
    src_scheme = get_scheme(source.quant) if source.quant else None
    units = []
    for key in sorted(infos, key=_natural):
        shape, dt = infos[key]
        module, _, leaf = key.rpartition(".")
        if module in source.quantized and src_scheme.file_leaves != QuantScheme.file_leaves:
            if leaf in src_scheme.file_leaves:  # packed (NVFP4): the source's tensors as they are
                units.append(Unit("copy", key, (OutTensor(key, shape, dt),)))
                continue
        elif leaf == "weight_scale" and module in source.quantized:
            continue  # written with its weight
        if leaf == "weight" and module in source.quantized:
            scale = OutTensor(f"{module}.weight_scale", src_scheme.scale_shape(shape[0]), torch.float32)
            units.append(Unit("quantized", key, (OutTensor(key, shape, dt), scale)))
        elif leaf == "weight" and quant is not None and module in targets:
            specs = quant.tensor_specs(*shape).items()
            outs = tuple(OutTensor(f"{module}.{n}", sp.shape, sp.dtype) for n, sp in specs if sp.default is None)
            units.append(Unit("quantize", key, outs))
        else:
            if dt.is_floating_point and dtype is not None:
                dt = torch.float32 if any(p in key for p in keep) else dtype
            units.append(Unit("tensor", key, (OutTensor(key, shape, dt),)))
    return units


@dataclass(frozen=True)
class Shard:
    file: str
    units: tuple[Unit, ...]


def plan_shards(units: Sequence[Unit], layout: str, shard_size: int) -> list[Shard]:
    """Files of the output: per block (blocks layout), or packed up to `shard_size` bytes."""
    if layout == "blocks":
        groups: dict[str, list[Unit]] = {}
        for u in units:
            m = _BLOCK.match(u.key)
            groups.setdefault(f"block_{m[1]}.safetensors" if m else "non_block.safetensors", []).append(u)
        return [Shard(name, tuple(us)) for name, us in groups.items()]
    packs: list[list[Unit]] = [[]]
    size = 0
    for u in units:
        if packs[-1] and size + u.nbytes > shard_size:
            packs.append([])
            size = 0
        packs[-1].append(u)
        size += u.nbytes
    if len(packs) == 1:
        return [Shard(f"{WEIGHTS}.safetensors", tuple(packs[0]))]
    n = len(packs)
    return [Shard(f"{WEIGHTS}-{i + 1:05d}-of-{n:05d}.safetensors", tuple(p)) for i, p in enumerate(packs)]


# ---------------------------------------------------------------- writing


@dataclass
class _Job:
    """What turns a unit's source tensor into its output tensors."""

    reader: _Reader
    source: DitSource
    quant: Optional[QuantScheme]
    loras: Sequence[tuple[LoraWeights, float]]
    merged: set = dataclasses.field(default_factory=set)

    def _lora(self, key: str, w: Callable[[], Tensor]) -> Optional[Tensor]:
        """w() + sum of strength * delta, in fp32, as merge_loras_ sums it (None: no LoRA targets `key`)."""
        hits = [(lw, s) for lw, s in self.loras if key in lw.targets]
        if not hits:
            return None
        acc = w().to(torch.float32, copy=True)
        for lw, strength in hits:
            acc.add_(lw.delta(key, acc.device), alpha=strength)
        self.merged.add(key)
        return acc

    def produce(self, unit: Unit) -> Iterator[Tensor]:
        w = self.reader.get(unit.key)
        if unit.kind == "copy":
            yield w
            return
        merged = self._lora(unit.key, lambda: w) if unit.kind != "quantized" else None
        if unit.kind == "tensor":
            yield (w if merged is None else merged).to(unit.outputs[0].dtype)
        elif unit.kind == "quantize":
            made = self.quant.quantize_tensors(w if merged is None else merged)
            yield from (made[o.key.rpartition(".")[2]] for o in unit.outputs)
        else:  # pre-quantized: the scale as dit_files reads it ([out, 1] or []; 1 where a float8 file has none)
            scheme = get_scheme(self.source.quant)
            scale_key = unit.outputs[1].key
            scale = self.reader.get(scale_key) if scale_key in self.reader.where else torch.ones(())
            scale = scale.reshape(unit.outputs[1].shape).to(torch.float32)
            merged = self._lora(unit.key, lambda: scheme.dequantize(w, scale))  # dequantize, merge, requantize
            yield from (w, scale) if merged is None else scheme.quantize(merged)


# ---------------------------------------------------------------- the entry point


@dataclass(frozen=True)
class ConvertReport:
    dst: Path
    layout: str
    files: tuple[str, ...]
    num_tensors: int
    total_bytes: int  # tensor data
    quant: Optional[str]  # scheme of the output, or None
    merged: tuple[str, ...]  # tensors LoRAs were merged into
    notes: tuple[str, ...]  # what the user should know (heads guessed, tensors not carried over)


def _check_dst(dst: Path) -> None:
    """A new or empty folder, in an existing folder where one can be created (before any work)."""
    check_new_folder(dst, "output folder", make_parents=False)


def _prepare(
    src: Path, quant: Optional[str], loras: Sequence[tuple[Union[str, Path], float]], allow_unmatched: bool,
) -> tuple[DitSource, Any, Optional[Any], list, list[str]]:
    source = inspect_dit_source(src)
    notes = []
    if quant is not None and source.quant is not None:
        raise InputError(f"{src} is already quantized ({source.quant}); convert it without --quant "
                         f"(or quantize the float model)")
    given = given_config(src, source)
    cfg = source.config if given is None else source.format.with_given(source.config, given)
    if source.ignored:
        notes.append(f"not carried over: {len(source.ignored)} tensors, e.g. {', '.join(source.ignored[:3])}")
    lws = []
    if loras:
        with torch.device("meta"):
            model = source.format.build(cfg)  # names and shapes only, no memory
        lws = [(load_lora(Path(p), model), float(s)) for p, s in loras]
        skipped = report_unmatched(lws, allow_unmatched)
        if skipped:
            notes.append(f"LoRA tensors skipped (they target nothing): {len(skipped)}")
        packed = source.quant and get_scheme(source.quant).file_leaves != QuantScheme.file_leaves
        hit = sorted({k for lw, _ in lws for k in lw.targets} & {f"{m}.weight" for m in source.quantized})
        if packed and hit:
            raise InputError(f"{src} is {source.quant}: convert cannot merge a LoRA into its layers ({hit[0]}); "
                             "merge into the float model and quantize, or load the LoRA at run time")
    return source, cfg, given, lws, notes


def convert_dit(
    src: Union[str, Path], dst: Union[str, Path], *, to: str = "official", quant: Optional[str] = None,
    loras: Sequence[tuple[Union[str, Path], float]] = (), allow_unmatched: bool = False,
    dtype: Union[str, torch.dtype, None] = None, shard_size: int = DEFAULT_SHARD_SIZE, log: Optional[Log] = None,
) -> ConvertReport:
    """Convert the DiT at `src` into the `to` layout in the new folder `dst` (see the module docstring).

    quant: one of QUANT_CHOICES, 'w8a8-int8' ... 'w4a4-nvfp4' (a float source only); loras: (file,
    strength) pairs, merged before quantizing (a LoRA key that targets nothing is an error, or with
    `allow_unmatched` a warning); dtype: 'bf16' / 'fp16' / 'fp32' or a torch dtype; shard_size: bytes per file
    (official / diffusers layouts). Bad input raises a one-line LightX2VError before anything is written.
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    loras = [(p, lora_strength(s)) for p, s in loras]  # NaN or a huge strength would write NaN weights
    if to not in LAYOUTS:
        raise InputError(f"unknown output layout {to!r}; expected one of {', '.join(LAYOUTS)}")
    if quant is not None and quant not in QUANT_CHOICES:
        raise InputError(f"--quant {quant!r}: expected one of {', '.join(QUANT_CHOICES)}")
    if dtype is not None:
        dtype = parse_dtype(dtype)  # 'bf16' | 'bfloat16' | torch.bfloat16 ...: one table for the whole package
    if shard_size <= 0:
        raise InputError(f"shard size must be positive, got {shard_size}")
    _check_dst(dst)
    source, cfg, given, lws, notes = _prepare(src, quant, loras, allow_unmatched)
    if given is None and to == "diffusers":
        notes.append(f"no config.json with the source: {source.format.guessed_fields(cfg)} in config.json are "
                     f"{source.family}'s defaults")
    scheme = get_scheme(quant) if quant else None
    reader = _Reader(source)
    units = plan_units(reader.infos, source, quant=scheme, dtype=dtype,
                       targets=quant_targets(source.format, cfg, scheme) if scheme else frozenset())
    shards = plan_shards(units, to, shard_size)
    total = sum(u.nbytes for u in units)
    free = shutil.disk_usage(dst.parent).free
    if total > free:
        raise InputError(f"not enough disk space for {dst}: the output needs {total / 1e9:.2f} GB, {free / 1e9:.2f} GB free")
    job = _Job(reader, source, scheme, lws)
    files = _write_atomic(dst, cfg, given, to, shards, job, log or (lambda _: None))
    return ConvertReport(dst=dst, layout=to, files=tuple(files), num_tensors=sum(len(u.outputs) for u in units),
                         total_bytes=total, quant=quant or source.quant, merged=tuple(sorted(job.merged)),
                         notes=tuple(notes))


def _write_atomic(
    dst: Path, cfg: Any, given: Optional[Any], layout: str, shards: Sequence[Shard],
    job: _Job, log: Log,
) -> list[str]:
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    except OSError as exc:
        raise InputError(f"cannot create the output folder in {dst.parent} ({exc.strerror})") from None
    try:
        files = _write_all(tmp, cfg, given, layout, shards, job, log)
        test_pause("convert")
        place_folder(tmp, dst)
    except BaseException as exc:  # Ctrl-C and SIGTERM included: leave nothing half-written
        shutil.rmtree(tmp, ignore_errors=True)
        note_removed(exc, f"the partial output {dst}")
        raise
    return files


def _write_all(
    tmp: Path, cfg: Any, given: Optional[Any], layout: str, shards: Sequence[Shard],
    job: _Job, log: Log,
) -> list[str]:
    fmt = job.source.format
    table = fmt.diffusers_key_table(cfg) if layout == "diffusers" else None
    name = (lambda k: official_to_diffusers_key(k, table)) if table else (lambda k: k)
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        specs = [(name(o.key), o.shape, o.dtype) for u in shard.units for o in u.outputs]
        tensors = (t for u in shard.units for t in job.produce(u))
        size = write_safetensors(tmp / shard.file, specs, tensors)
        weight_map |= {k: shard.file for k, _, _ in specs}
        log(f"[{i + 1}/{len(shards)}] {shard.file} ({size / 1e9:.2f} GB)")
    missing = {k for lw, _ in job.loras for k in lw.targets} - job.merged
    if missing:
        raise CheckpointError(f"LoRA targets not in the source: {', '.join(sorted(missing)[:4])}")
    files = [s.file for s in shards]
    if len(shards) > 1 and layout != "blocks":
        total = sum(o.nbytes for s in shards for u in s.units for o in u.outputs)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / f"{WEIGHTS}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        files.append(f"{WEIGHTS}.safetensors.index.json")
    config = fmt.diffusers_config(cfg) if layout == "diffusers" else fmt.official_config(cfg) if given else None
    if config is not None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        files.append("config.json")
    return files
