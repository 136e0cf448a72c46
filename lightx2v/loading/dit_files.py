"""Wan DiT weights from whatever file or folder a user has, plain or pre-quantized.

Design: `inspect_dit_source(path)` finds out what a path holds by reading safetensors headers
only (no tensor data): where the tensors are (`kind`), how they are named (`key_format`, the
prefix to strip), whether and how they are quantized (`quant`, read from the tensors' dtypes and
scale shapes, never from the file name), which family's DiT they are (the first registered family
whose `DitFormat` recognises the keys) and what model they make (its config, read off the shapes). `read_dit_state_dict` then maps the tensors (mmap) to official keys, and `build_dit`
loads them into the family's meta-built model, with `QuantLinear` layers where the file is quantized.
Nothing here names a family: key formats, configs and model classes come from the family's
`DitFormat` (e.g. lightx2v.models.wan.dit_format).

kind          what the user passed
single-file   one .safetensors (or .pth/.pt/.bin): LightX2V releases (official keys), ComfyUI files
              (`model.diffusion_model.` prefix), bare official state dicts, diffusers-keyed files
sharded       a `*.safetensors.index.json` whose `weight_map` names the shards
blocks        a folder of `block_<i>.safetensors` (the tensors `blocks.<i>.*`, full official names)
              + `non_block.safetensors` (everything else): the layout LightX2V's converter writes
              with `--save_by_block` (it may add an index; it is not needed)
folder        a model folder: official Wan (diffusion_pytorch_model*.safetensors), a diffusers
              pipeline root (its transformer/) or any folder with one DiT file or indexed shards

Quantized formats (official names after renaming; see lightx2v.quant):
  w8a8-int8   `<m>.weight` int8 [out, in] + `<m>.weight_scale` [out, 1]          (LightX2V)
  w8a8-fp8    `<m>.weight` float8_e4m3fn + `<m>.weight_scale` [out, 1]            (LightX2V)
  fp8-scaled  `<m>.weight` float8_e4m3fn + `<m>.scale_weight` [] (renamed to `weight_scale`),
              `<m>.scale_input` and the `scaled_fp8` marker dropped                   (ComfyUI)
              or float8 weights with no scale at all (a plain cast: scale 1)
  w4a4-nvfp4  `<m>.weight` uint8 [out, in/2] (two e2m1 per byte) + `<m>.weight_scale` float8_e4m3fn
              [round_up(out, 128), round_up(in/16, 4)] (swizzled) + `<m>.weight_global_scale` [],
              or `<m>.input_global_scale` + `<m>.alpha` instead of it                  (LightX2V)
A scheme's `from_file` turns a layer's file tensors into the layer's state (lightx2v.quant).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from lightx2v.errors import CheckpointError, InputError
from lightx2v.loading.safetensors_io import ST_DTYPES, TensorInfo, read_safetensors_header  # noqa: F401 (re-exported)
from lightx2v.loading.state_dict import StateDict, index_shards, load_into, read_sharded, read_tensors
from lightx2v.models.registry import families, get_family
from lightx2v.quant import QuantLinear, apply_quant, get_scheme

KINDS = ("single-file", "sharded", "blocks", "folder")
KEY_FORMATS = ("official", "comfyui", "diffusers")
TORCH_FILES = (".pth", ".pt", ".bin", ".ckpt")
# file-key suffixes that carry no weight for the dequantizing path (ComfyUI's static activation
# scales and its per-layer format records) and the scaled-fp8 marker tensor
_DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
_MARKERS = ("scaled_fp8",)
# per-layer tensors beside `<m>.weight` that quantized files hold (renamed with the weight)
QUANT_LEAVES = ("weight_scale", "weight_global_scale", "input_global_scale", "alpha", "input_absmax")



@dataclass(frozen=True)
class DitSource:
    """What a DiT path holds; read from headers only (see inspect_dit_source)."""

    path: Path
    family: str                       # the registered family whose DiT this is ("wan2.1")
    kind: str                         # one of KINDS
    files: tuple[Path, ...]
    key_format: str                   # one of KEY_FORMATS
    prefix: str                       # stripped from every key ("" if none)
    quant: Optional[str]              # a lightx2v.quant scheme name, or None (plain float weights)
    quantized: tuple[str, ...]        # module names (official) holding quantized weights
    dtypes: tuple[tuple[str, int], ...]  # (dtype as stored, tensor count), most common first
    num_tensors: int
    num_params: int
    shapes: Mapping[str, tuple[int, ...]]  # official key -> shape (quantized weights: [out, in])
    config: Any                       # the family's DiT config, read off the shapes (heads guessed)
    ignored: tuple[str, ...] = ()     # file keys not loaded (outside the prefix, markers, input scales)

    @property
    def format(self):
        """The family's DitFormat."""
        return format_of(self.family)

    @property
    def looks_like(self) -> str:
        return self.format.describe(self.config)

    def describe(self) -> str:
        """One paragraph for `lightx2v info FILE`."""
        fmt = self.key_format + (f" keys (prefix {self.prefix!r} stripped)" if self.prefix else " keys")
        quant = f"quantized {self.quant} ({len(self.quantized)} layers)" if self.quant else "not quantized"
        dtypes = ", ".join(f"{d} x{n}" for d, n in self.dtypes)
        lines = [f"{self.path}", f"  {self.looks_like}", f"  {self.kind}, {fmt}, {quant}",
                 f"  {self.num_tensors} tensors, {_count(self.num_params)} params ({dtypes})"]
        lines += [f"    {f}" for f in self.files[:4]] + ([f"    ... {len(self.files) - 4} more"] if len(self.files) > 4 else [])
        if self.ignored:
            lines.append(f"  not loaded: {len(self.ignored)} tensors, e.g. {', '.join(self.ignored[:3])}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "files": [str(f) for f in self.files],
                "key_format": self.key_format, "prefix": self.prefix, "quant": self.quant,
                "quantized_layers": len(self.quantized), "dtypes": dict(self.dtypes), "tensors": self.num_tensors,
                "params": self.num_params, "looks_like": self.looks_like, "config": dataclasses.asdict(self.config),
                "ignored": list(self.ignored)}


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


# ---------------------------------------------------------------- headers


def _file_infos(path: Path) -> dict[str, TensorInfo]:
    if path.suffix == ".safetensors":
        return read_safetensors_header(path)
    return {k: (tuple(v.shape), v.dtype) for k, v in read_tensors(path).items()}  # mmap: metadata only


# ---------------------------------------------------------------- where the tensors are


def _block_files(folder: Path) -> Optional[list[Path]]:
    blocks = {int(m[1]): p for p in folder.glob("block_*.safetensors")
              if (m := re.fullmatch(r"block_(\d+)\.safetensors", p.name))}
    if not blocks:
        return None
    gaps = [i for i in range(max(blocks) + 1) if i not in blocks]
    if gaps:
        raise CheckpointError(f"block-split folder {folder} lacks block_{gaps[0]}.safetensors "
                              f"(it has block_0 .. block_{max(blocks)})")
    non_block = folder / "non_block.safetensors"
    if not non_block.is_file():
        raise CheckpointError(f"block-split folder {folder} lacks non_block.safetensors (embeddings, head)")
    return [blocks[i] for i in range(len(blocks))] + [non_block]


def _folder_files(folder: Path) -> list[Path]:
    if (folder / "model_index.json").is_file() and (folder / "transformer").is_dir():
        if (folder / "transformer_2").is_dir():  # two experts (Wan2.2 A14B): which one is not ours to guess
            raise CheckpointError(f"{folder} holds two DiTs, transformer/ and transformer_2/; pass the one you mean")
        return _folder_files(folder / "transformer")  # a diffusers pipeline root
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    preferred = [i for i in indexes if i.name == "diffusion_pytorch_model.safetensors.index.json"]
    if preferred or len(indexes) == 1:
        return index_shards((preferred or indexes)[0])
    if len(indexes) > 1:
        raise CheckpointError(f"{folder} holds several indexes ({', '.join(i.name for i in indexes)}); pass one of them")
    single = folder / "diffusion_pytorch_model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(folder.glob("*-of-*.safetensors")) or sorted(folder.glob("*.safetensors"))
    if len(files) == 1 or (files and all("-of-" in f.name for f in files)):
        return files
    if files:
        raise CheckpointError(f"{folder} holds several .safetensors files and no index "
                              f"({', '.join(f.name for f in files[:4])}); pass the DiT file itself")
    subs = sorted(f"{d.name}/" for d in folder.iterdir() if d.is_dir() and (d / "config.json").is_file()
                  and any(d.glob("*.safetensors")))
    if subs:  # e.g. a Wan2.2 A14B folder: high_noise_model/, low_noise_model/
        raise CheckpointError(f"no DiT weights in {folder} itself; its sub-folders {', '.join(subs)} hold DiTs: "
                              "pass the one you mean")
    raise CheckpointError(f"no DiT weights in {folder}: expected a .safetensors file, shards with an index, "
                          "or block_<i>.safetensors + non_block.safetensors")


def locate_dit_files(path: Path) -> tuple[str, list[Path]]:
    """(kind, files) of a DiT path; see the module docstring for the kinds."""
    if path.is_dir():
        blocks = _block_files(path)
        return ("blocks", blocks) if blocks else ("folder", _folder_files(path))
    if not path.is_file():
        raise CheckpointError(f"DiT weights not found: {path}")
    if path.name.endswith(".index.json"):
        return "sharded", index_shards(path)
    if path.suffix == ".safetensors" or path.suffix in TORCH_FILES:
        return "single-file", [path]
    if path.suffix == ".gguf":
        raise CheckpointError(f"{path} is a GGUF file, which lightx2v does not read; use a .safetensors DiT")
    raise CheckpointError(f"{path}: unknown DiT file type {path.suffix!r}; expected .safetensors, "
                          f"a .safetensors.index.json, {', '.join(TORCH_FILES)} or a folder")


# ---------------------------------------------------------------- what the keys are


# (what it looks like, regexes that must all match some key); the first match names the file
_OTHER_MODELS = (
    ("a LoRA (lora_A/lora_B or lora_down/lora_up tensors), not a full DiT: load it as a LoRA", (r"lora_(A|B|up|down)\b|\.lora\.",)),
    ("a HunyuanVideo transformer", (r"individual_token_refiner",)),
    ("a Flux transformer", (r"(^|\.)double_blocks\.", r"(^|\.)single_blocks\.")),
    ("a diffusers Flux transformer", (r"(^|\.)single_transformer_blocks\.",)),
    ("a Qwen-Image transformer", (r"(^|\.)transformer_blocks\.\d+\.img_mod",)),
    ("an SD3 MMDiT", (r"(^|\.)joint_blocks\.",)),
    ("a Stable Diffusion UNet", (r"(^|\.)input_blocks\.", r"(^|\.)middle_block\.")),
    ("a diffusers VAE", (r"(^|\.)encoder\.down_blocks\.", r"(^|\.)decoder\.up_blocks\.")),
    ("a diffusers UNet", (r"(^|\.)down_blocks\.", r"(^|\.)up_blocks\.")),
    ("a Wan VAE (Wan2.1_VAE.pth), not a DiT", (r"(^|\.)encoder\.downsamples\.", r"(^|\.)decoder\.upsamples\.")),
    ("a Wan T5 text encoder, not a DiT", (r"(^|\.)token_embedding\.", r"blocks\.\d+\.attn\.q\.")),
    ("a T5 text encoder", (r"(^|\.)encoder\.block\.\d+\.layer\.",)),
    ("a CLIP model", (r"(^|\.)(visual|vision_model|text_model)\.",)),
    ("a language model (Qwen/Llama-style)", (r"(^|\.)layers\.\d+\.(self_attn|mlp)\.",)),
    ("part of a block-split DiT (blocks only, no patch_embedding): pass the folder holding "
     "block_<i>.safetensors and non_block.safetensors", (r"^blocks\.\d+\.",)),
    # its diffusers keys are more than a rename (models/hunyuan15/dit_format.py): read per key, only the official ones
    ("a HunyuanVideo-1.5 DiT in diffusers keys; this reads its official keys (the released "
     "transformer/<res>/diffusion_pytorch_model.safetensors); a diffusers model folder loads whole with "
     "generate / from_pretrained", (r"(^|\.)cond_type_embed\.", r"(^|\.)context_embedder\.token_refiner\.")),
    ("a diffusers transformer of another family", (r"(^|\.)transformer_blocks\.",)),
)


def format_of(family: str):
    """The registered family's DitFormat."""
    return get_family(family).dit_format


def _not_a_dit(keys: Iterable[str], where: Path) -> CheckpointError:
    keys = sorted(keys)
    names = " or ".join(f.title for f in families())
    for what, patterns in _OTHER_MODELS:
        if all(any(re.search(p, k) for k in keys) for p in patterns):
            return CheckpointError(f"{where} is not a {names} DiT checkpoint: it looks like {what} "
                                   f"({len(keys)} tensors, e.g. {', '.join(keys[:2])})")
    heads = Counter(".".join(k.split(".")[:2]) for k in keys).most_common(5)
    anchors = ", ".join(sorted({f.dit_format.anchor for f in families()}))
    return CheckpointError(f"{where} is not a {names} DiT checkpoint (no {anchors} and block tensors); "
                           f"its {len(keys)} tensors start with: {', '.join(h for h, _ in heads) or 'nothing'}")


def detect_key_format(keys: Iterable[str], where: Path) -> tuple[str, str, str]:
    """(family, key_format, prefix) of a DiT's keys: the first family whose format recognises them;
    a CheckpointError saying what the file is otherwise."""
    keys = list(keys)
    for spec in families():
        fmt = spec.dit_format
        anchors = [k for k in keys if k.endswith(fmt.anchor)]
        if len(anchors) > 1:
            raise CheckpointError(f"{where} holds {len(anchors)} {fmt.anchor} tensors ({', '.join(anchors[:3])}); "
                                  "expected one DiT")
        if not anchors:
            continue
        prefix = anchors[0][: -len(fmt.anchor)]
        found = fmt.key_format([k[len(prefix):] for k in keys if k.startswith(prefix)])
        if found == "official":
            return spec.name, ("comfyui" if prefix else "official"), prefix
        if found is not None:
            return spec.name, found, prefix
    raise _not_a_dit(keys, where)


def dit_key_from_file(key: str, key_format: str, fmt) -> Optional[str]:
    """The model's key for a file key (its prefix already stripped); None for tensors not loaded.
    `fmt`: the family's DitFormat (its diffusers rename)."""
    if key in _MARKERS or key.endswith(_DROPPED_SUFFIXES):
        return None
    if key.endswith(".scale_weight"):  # ComfyUI scaled fp8: per-tensor scale
        key = key[: -len(".scale_weight")] + ".weight_scale"
    if key_format != "diffusers":
        return key
    module, _, leaf = key.rpartition(".")
    if leaf in QUANT_LEAVES:  # follows its layer's weight: `...to_q.weight_scale` -> `...q.weight_scale`
        new = fmt.key_from_diffusers(f"{module}.weight")
        return None if new is None else new[: -len("weight")] + leaf
    return fmt.key_from_diffusers(key)


# ---------------------------------------------------------------- quantization, from the tensors


def _scheme_of(module: str, infos: Mapping[str, TensorInfo], where: Path) -> str:
    (wshape, wdt), scale = infos[f"{module}.weight"], infos.get(f"{module}.weight_scale")
    if wdt == torch.uint8:
        from lightx2v.quant.nvfp4 import file_scheme

        return file_scheme(module, infos, where)
    if scale is None:
        if wdt == torch.float8_e4m3fn:
            return "fp8-scaled"  # a plain cast to float8: scale 1
        raise CheckpointError(f"{where}: {module}.weight is {wdt} without a weight_scale; cannot dequantize it")
    n = math.prod(scale[0])
    per_channel = n == wshape[0] and len(scale[0]) >= 1
    if wdt == torch.int8 and per_channel:
        return "w8a8-int8"
    if wdt == torch.float8_e4m3fn and per_channel:
        return "w8a8-fp8"
    if wdt == torch.float8_e4m3fn and n == 1:
        return "fp8-scaled"
    raise CheckpointError(f"{where}: {module}.weight is {wdt} with a scale of shape {list(scale[0])}; lightx2v reads "
                          "int8 / float8_e4m3fn weights with a per-channel [out, 1] or (fp8) per-tensor scale, "
                          "and NVFP4 (uint8) weights")


def detect_quant(infos: Mapping[str, TensorInfo], where: Path) -> tuple[Optional[str], tuple[str, ...]]:
    """(scheme name or None, quantized module names) from official-keyed (shape, dtype) infos."""
    low = (torch.int8, torch.uint8, torch.float8_e4m3fn, torch.float8_e5m2)
    modules = {k[: -len(".weight_scale")] for k in infos if k.endswith(".weight_scale")}
    modules |= {k[: -len(".weight")] for k, (s, d) in infos.items() if k.endswith(".weight") and d in low and len(s) == 2}
    found: dict[str, str] = {}
    for m in sorted(modules):
        if f"{m}.weight" not in infos:
            raise CheckpointError(f"{where} has {m}.weight_scale but no {m}.weight")
        if infos[f"{m}.weight"][1] == torch.float8_e5m2:
            raise CheckpointError(f"{where}: {m}.weight is float8_e5m2; lightx2v reads float8_e4m3fn and int8 weights")
        found[m] = _scheme_of(m, infos, where)
    schemes = sorted(set(found.values()))
    if len(schemes) > 1:
        first = {s: next(m for m, v in found.items() if v == s) for s in schemes}
        raise CheckpointError(f"{where} mixes quantization schemes: " + ", ".join(f"{s} ({m})" for s, m in first.items()))
    return (schemes[0] if schemes else None), tuple(sorted(found))


# ---------------------------------------------------------------- the public entry points


def inspect_dit_source(path: Union[str, Path]) -> DitSource:
    """What a DiT file / index / folder holds, from the safetensors headers (no tensor data read)."""
    path = Path(path).expanduser()
    kind, files = locate_dit_files(path)
    return _inspect(path, kind, files)


def inspect_dit_files(files: Union[str, Path, Iterable[Union[str, Path]]]) -> DitSource:
    """`inspect_dit_source` of exactly these files (a model folder's DiT as its layout lists them:
    one file, or the shards of an index); the source's path is their folder."""
    files = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    if not files:
        raise CheckpointError("no DiT files given")
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:
        raise CheckpointError(f"DiT weights not found: {missing}")
    path = files[0] if len(files) == 1 else files[0].parent
    return _inspect(path, "single-file" if len(files) == 1 else "folder", files)


def _inspect(path: Path, kind: str, files: list[Path]) -> DitSource:
    raw: dict[str, TensorInfo] = {}
    for i, f in enumerate(files):
        infos = _file_infos(f)
        if kind == "blocks" and f.name != "non_block.safetensors":
            stray = next((k for k in infos if f"blocks.{i}." not in k), None)
            if stray is not None:
                raise CheckpointError(f"{f} holds {stray}; a block-split folder keeps blocks.{i}.* in block_{i}.safetensors")
        dup = raw.keys() & infos.keys()
        if dup:
            raise CheckpointError(f"key {sorted(dup)[0]!r} appears in more than one file ({f})")
        raw.update(infos)
    family, key_format, prefix = detect_key_format(raw, path)
    fmt = format_of(family)
    official: dict[str, TensorInfo] = {}
    ignored = []
    for k, info in raw.items():
        nk = dit_key_from_file(k[len(prefix):], key_format, fmt) if k.startswith(prefix) else None
        if nk is None:
            ignored.append(k)
        else:
            official[nk] = info
    quant, quantized = detect_quant(official, path)
    shapes = {k: s for k, (s, _) in official.items()}
    if quant is not None:  # packed formats: the config is read off [out, in]
        scheme = get_scheme(quant)
        shapes |= {f"{m}.weight": scheme.logical_shape(shapes[f"{m}.weight"]) for m in quantized}
    counts = Counter(str(d).replace("torch.", "") for _, d in raw.values()).most_common()
    return DitSource(
        path=path, family=family, kind=kind, files=tuple(files), key_format=key_format, prefix=prefix, quant=quant,
        quantized=quantized, dtypes=tuple(counts), num_tensors=len(raw),
        num_params=sum(math.prod(s) for s, _ in raw.values()), shapes=shapes,
        config=fmt.config_from_shapes(shapes, what=str(path)), ignored=tuple(sorted(ignored)),
    )


def read_dit_state_dict(source: DitSource) -> StateDict:
    """Official-keyed tensors of a DiT source (mmap). Quantized weights stay int8 / float8 / packed
    with their scales, as the scheme's `from_file` makes the layer's state of them (one-scale
    schemes: `weight_scale` reshaped to [out, 1] or [], 1 where a float8 file has none)."""
    files = list(source.files)
    sd = read_tensors(files[0]) if len(files) == 1 else read_sharded(files)
    out: StateDict = {}
    for k, v in sd.items():
        nk = (dit_key_from_file(k[len(source.prefix):], source.key_format, source.format)
              if k.startswith(source.prefix) else None)
        if nk is not None:
            out[nk] = v
    if source.quant is not None:
        scheme = get_scheme(source.quant)
        for m in source.quantized:
            found = {leaf: out.pop(f"{m}.{leaf}") for leaf in scheme.file_leaves if f"{m}.{leaf}" in out}
            out.update({f"{m}.{leaf}": t for leaf, t in scheme.from_file(found).items()})
    return out


def prepare_for_quantized(model: nn.Module, source: DitSource, *, dtype: torch.dtype) -> nn.Module:
    """Swap the Linears that the file holds quantized for QuantLinear (on the meta-built model), so
    that loading finds `weight` / `weight_scale` where the file has them. `dtype`: the compute dtype."""
    if source.quant is None:
        return model
    layers = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear))}
    stray = [m for m in source.quantized if m not in layers]
    if stray:
        raise CheckpointError(f"{source.path} holds quantized weights for {stray[0]}, which is not a Linear of the model")
    return apply_quant(model, source.quant, targets=source.quantized, compute_dtype=dtype)


def _cast_for(model: nn.Module, sd: Mapping[str, Tensor], dtype, device, keep: tuple[str, ...]) -> StateDict:
    quant = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    out: StateDict = {}
    for k, v in sd.items():
        owner, _, leaf = k.rpartition(".")
        q = quant.get(owner)
        dev = device or v.device
        if q is not None and leaf == "weight" and v.dtype != q.scheme.qdtype:
            if not v.is_floating_point() or f"{owner}.weight_scale" in sd:
                raise CheckpointError(f"DiT tensor {k} is {v.dtype}; the {q.scheme.name} layer expects {q.scheme.qdtype}")
            # a float file: quantized on load (the weight, its scales, and the optional tensors' defaults)
            out.update({f"{owner}.{n}": t for n, t in q.quantized_state(v.to(dev)).items()})
            continue
        elif q is not None:
            v = v.to(dev, q.tensor_dtype(leaf))  # stored tensors keep the scheme's dtype; the bias the compute dtype
        elif v.is_floating_point():
            v = v.to(dev, torch.float32 if any(p in k for p in keep) else (dtype or v.dtype))
        else:
            v = v.to(dev)
        out[k] = v
    return out


def load_dit_weights(
    model: nn.Module, sd: Mapping[str, Tensor], *, dtype: Optional[torch.dtype], device=None,
    keep_fp32: Optional[Iterable[str]] = None, what: str = "DiT",
) -> nn.Module:
    """`load_into` for a DiT that may hold QuantLinear layers: their weights keep the file's int8 /
    float8 (a float weight is quantized on the way, so `apply_quant` on the meta model + a float
    file quantizes at load), scales become fp32, biases the layer's compute dtype; every other
    tensor is cast as load_into does (`keep_fp32` defaults to the model's `_keep_in_fp32`)."""
    keep = tuple(getattr(model, "_keep_in_fp32", ()) if keep_fp32 is None else keep_fp32)
    return load_into(model, _cast_for(model, sd, dtype, device, keep), what=what)


def build_dit(
    source: DitSource, *, dtype: torch.dtype, device=None, expected: Optional[Any] = None,
    quant: Optional[str] = None,
) -> nn.Module:
    """The family's loaded DiT from a DiT source. `expected`: the model folder's DiT config; a file of
    another size or task is a CheckpointError, and the fields shapes cannot tell come from it.
    `quant`: quantize the block linears of a float source as each weight is read (a pre-quantized
    source loads as it is; asking it for another scheme is an error)."""
    if expected is not None:
        source.format.check_matches(source.config, expected, str(source.path))
    if quant is not None:
        get_scheme(quant)  # a clear error for an unknown name
        if source.quant is not None and quant != source.quant:
            raise InputError(f"{source.path} is already quantized ({source.quant}); it cannot be loaded as {quant}")
    with torch.device("meta"):
        model = source.format.build(source.config if expected is None else expected)
    prepare_for_quantized(model, source, dtype=dtype)
    if quant is not None and source.quant is None:
        apply_quant(model, quant, compute_dtype=dtype)
    load_dit_weights(model, read_dit_state_dict(source), dtype=dtype, device=device)
    return model.eval().requires_grad_(False)
