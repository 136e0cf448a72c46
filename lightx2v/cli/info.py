"""`lightx2v info DIR`: what was detected in a model folder."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

HELP = "show what a model folder or DiT file holds: family, task, layout, sizes, dtypes, quantization, files"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_path", help="model folder (any layout of a supported family), Hugging Face repo id, "
                                      "or a DiT weight file / block folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def describe(root: str | Path) -> dict:
    from lightx2v.loading.detect import detect
    from lightx2v.loading.hub import resolve_model_path
    from lightx2v.loading.inspect import summarize

    mc = detect(resolve_model_path(root))
    spec = mc.spec
    distill = None if mc.distill is None else {"evidence": mc.distill.evidence,
                                              "preset": getattr(mc.distill.preset, "name", None)}
    components = {"dit": summarize(list(mc.files["dit"]))}
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


def run(args: argparse.Namespace) -> int:
    path = Path(args.model_path).expanduser()
    if is_dit_source(path):
        from lightx2v.loading.dit_files import inspect_dit_source

        src = inspect_dit_source(path)
        print(json.dumps(src.as_dict(), indent=2) if args.json else src.describe())
        return 0
    info = describe(args.model_path)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    dit = info["dit"]
    print(f"{info['path']}")
    print(f"  model    {info['family']} {info['task']} {info['size']}  (layout: {info['layout']})")
    print(f"  DiT      dim {dit['dim']}, {dit['num_layers']} layers, {dit['num_heads']} heads, ffn {dit['ffn_dim']}, in {dit['in_dim']} -> out {dit['out_dim']}")
    for name, c in info["components"].items():
        dtypes = ", ".join(f"{k} x{v}" for k, v in c["dtypes"].items())
        print(f"  {name:<12} {_human(c['params'], 'params')}, {_human(c['bytes'])} on disk, {c['tensors']} tensors ({dtypes})")
        for f in c["files"]:
            print(f"               {f}")
    if info.get("tokenizer"):
        print(f"  tokenizer    {info['tokenizer']}")
    d = info["defaults"]
    print(f"  defaults {d['solver']} ({d['convention']} sigmas), {d['num_inference_steps']} steps, guidance {d['guidance_scale']}, shift {d['shift']}, {d['fps']} fps")
    if info["distill"]:
        print(f"  step-distilled: {info['distill']['evidence']}")
    return 0
