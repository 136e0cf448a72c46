"""`lightx2v info PATH`: what a model folder, a DiT file or folder, or a LoRA file holds.

- a LoRA file: its key convention, ranks, alphas, widths, targeted blocks and modules, and the
  model it fits (lightx2v.loading.lora_info);
- a DiT weight file, or a folder of DiT files only (a block split, shards, or what `lightx2v
  convert` writes: official, diffusers or blocks layout, with its config.json): the DiT it holds
  (lightx2v.loading.dit_files), completed by the folder's config.json;
- a model folder or a Hugging Face repo id: family, task, layout, components, defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

HELP = ("show what a model folder, a DiT file or folder, or a LoRA file holds: family, task, layout, sizes, "
        "dtypes, quantization, files; a LoRA's format, rank, widths and targets")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_path", help="model folder (any layout of a supported family), Hugging Face repo id, "
                                      "a DiT weight file or folder (what `lightx2v convert` writes), or a LoRA file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def describe(root: str | Path) -> dict:
    from lightx2v.loading.hub import resolve_model_path

    path = resolve_model_path(root)  # before the heavy imports: a bad path or the Hub fails fast

    from lightx2v.loading.detect import detect
    from lightx2v.loading.inspect import summarize

    mc = detect(path)
    spec = mc.spec
    distill = None if mc.distill is None else {"evidence": mc.distill.evidence,
                                              "preset": getattr(mc.distill.preset, "name", None)}
    # every DiT (a two-expert model's second one is "dit_2"), then the family's other components
    components = {name: summarize(list(mc.files[name])) for name in mc.dit_names}
    for comp in spec.components:
        if comp.needed(mc):
            files = mc.files[comp.name]
            components[comp.name] = summarize(list(files) if isinstance(files, tuple) else files)
    d = dataclasses.asdict(mc.defaults)
    d.pop("scheduler_config")
    extra = spec.describe(mc)
    return {
        "path": str(mc.root), "family": mc.family, "task": mc.task, "layout": mc.layout,
        "size": extra.pop("size", ""), "dit": dataclasses.asdict(mc.dit), "components": components,
        "defaults": d, "distill": distill, **extra,
    }


def is_dit_source(path: Path) -> bool:
    """A weight file, or a folder that is not a model folder (a block-split or sharded DiT)."""
    return path.is_file() or (path.is_dir() and not (path / "config.json").is_file()
                              and not (path / "model_index.json").is_file()
                              and any(path.glob("*.safetensors")))


def _human(n: float, unit: str = "B") -> str:
    for p in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or p == "T":
            return f"{n:.1f} {p}{unit}" if p else f"{int(n)} {unit}"
        n /= 1000
    return str(n)


def dit_folder(path: Path):
    """(DitSource, config file or None) of a folder holding a DiT only; None if it holds none.

    The DiT's config is read off the shapes and completed by the folder's config.json (heads,
    text length, eps: what shapes cannot tell), as `lightx2v convert` writes it."""
    from lightx2v.errors import CheckpointError
    from lightx2v.loading.dit_files import inspect_dit_source

    try:
        src = inspect_dit_source(path)
    except CheckpointError:
        return None
    config = next((c for c in (path / "config.json", path / "transformer" / "config.json") if c.is_file()), None)
    try:
        given = src.format.parse_config(json.loads(config.read_text())) if config else None
    except (OSError, ValueError):  # CheckpointError is a ValueError: a config of something else
        given = None
    if given is None:
        return src, None
    src.format.check_matches(src.config, given, f"the weights in {path}")  # config.json of another model
    return dataclasses.replace(src, config=src.format.with_given(src.config, given)), config


def _print_dit_folder(args: argparse.Namespace, found: tuple, reason: str) -> None:
    src, config = found
    if args.json:
        print(json.dumps({**src.as_dict(), "dit_only": True, "config_file": str(config) if config else None,
                          "not_a_model_folder": reason}, indent=2))
        return
    lines = src.describe().splitlines()
    lines[1:1] = [f"  DiT only: no text encoder or VAE here ({reason})",
                  "  use it as --dit-path with a model folder of the same model, or as `lightx2v convert`'s source"]
    if config is not None:
        lines.append(f"  config   {config} read (it completes what the shapes cannot tell)")
    print("\n".join(lines))


def run(args: argparse.Namespace) -> int:
    from lightx2v.errors import CheckpointError, HubError

    path = Path(args.model_path).expanduser()
    if path.is_file():
        from lightx2v.loading.lora_info import describe_lora, is_lora_file

        if is_lora_file(path):
            lora = describe_lora(path)
            print(json.dumps(lora.as_dict(), indent=2) if args.json else lora.describe())
            return 0
    if is_dit_source(path):
        from lightx2v.loading.dit_files import inspect_dit_source

        src = inspect_dit_source(path)
        print(json.dumps(src.as_dict(), indent=2) if args.json else src.describe())
        return 0
    try:
        info = describe(args.model_path)
    except CheckpointError as exc:
        found = None if isinstance(exc, HubError) or not path.is_dir() else dit_folder(path)
        if found is None:
            raise
        _print_dit_folder(args, found, str(exc))
        return 0
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    print(f"{info['path']}")
    print(f"  model    {info['family']} {info['task']} {info['size']}  (layout: {info['layout']})")
    for key, label in (("dit", "DiT"), ("dit_2", "DiT 2")):
        if info.get(key):
            dit = info[key]
            print(f"  {label:<8} {_dit_line(dit)}")
    if info.get("experts"):
        print(f"  experts  {info['experts']}")
    if isinstance(info.get("vae"), str):
        print(f"  VAE      {info['vae']}")
    for name, c in info["components"].items():
        dtypes = ", ".join(f"{k} x{v}" for k, v in c["dtypes"].items())
        print(f"  {name:<12} {_human(c['params'], 'params')}, {_human(c['bytes'])} on disk, {c['tensors']} tensors ({dtypes})")
        files = c["files"]
        for f in files if len(files) <= 6 else files[:4]:
            print(f"               {f}")
        if len(files) > 6:
            print(f"               ... {len(files) - 4} more")
    if info.get("tokenizer"):
        print(f"  tokenizer    {info['tokenizer']}")
    d = info["defaults"]
    guidance = d["guidance_scale"] if d.get("guidance_scale_2") is None else \
        f"{d['guidance_scale']} / {d['guidance_scale_2']} (high / low noise)"
    print(f"  defaults {d['solver']} ({d['convention']} sigmas), {d['num_inference_steps']} steps, guidance {guidance}, shift {d['shift']}, {d['fps']} fps")
    if info["distill"]:
        print(f"  step-distilled: {info['distill']['evidence']}")
    return 0


_DIT_FIELDS = (("dim", "dim {}"), ("num_layers", "{} layers"), ("num_heads", "{} heads"), ("ffn_dim", "ffn {}"))


def _dit_line(dit: dict) -> str:
    """The DiT's sizes by the field names its family uses (Wan's; another family's config is printed as
    its fields are: each family names them after its own checkpoint's config)."""
    if all(k in dit for k, _ in _DIT_FIELDS):
        line = ", ".join(fmt.format(dit[k]) for k, fmt in _DIT_FIELDS)
        return line + (f", in {dit['in_dim']} -> out {dit['out_dim']}" if "in_dim" in dit and "out_dim" in dit else "")
    return ", ".join(f"{k} {v}" for k, v in dit.items() if isinstance(v, (int, float, str)))

