"""Peak host memory (RSS) of `lightx2v convert` next to the size of the model it converts.

Builds a random Wan DiT of a chosen width and depth on disk in the official layout (bf16 by
default; written tensor by tensor, so building it takes no memory either), then runs each
conversion as a child of a small measuring process that reports
`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` once the child has exited (what
`/usr/bin/time -v` calls "Maximum resident set size"). A child that only imports the converter
gives the floor (Python + torch), and a naive conversion (safetensors `load_file` + `save_file`
of the whole state dict) shows what streaming saves. CPU only.

    python benchmarks/convert_rss.py                      # 14B width (5120), 8 layers, bf16: ~6 GB
    python benchmarks/convert_rss.py --layers 40          # the whole 14B DiT (~28 GB on disk, per output)
    python benchmarks/convert_rss.py --dim 1536 --ffn 8960 --heads 12 --layers 30   # 1.3B
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MEASURE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
NAIVE = ("import sys; from safetensors.torch import load_file, save_file; "
         "sd = load_file(sys.argv[1]); save_file(sd, sys.argv[2])")


def build_model(folder: Path, dim: int, ffn: int, heads: int, layers: int, dtype: torch.dtype) -> int:
    """A random official-layout Wan2.1 T2V DiT; returns the bytes of its tensors."""
    from lightx2v.loading.safetensors_io import write_safetensors
    from lightx2v.models.wan.dit import WanDiTConfig, WanModel

    cfg = WanDiTConfig(model_type="t2v", in_dim=16, dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=layers)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WanModel(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    specs = [(k, s, dtype) for k, s in shapes.items()]
    tensors = ((torch.randn(s, generator=g) * 0.02).to(dtype) for _, s, _ in specs)
    folder.mkdir(parents=True)
    write_safetensors(folder / "diffusion_pytorch_model.safetensors", specs, tensors)
    (folder / "config.json").write_text(json.dumps(cfg.to_official()))
    return sum(torch.Size(s).numel() * dtype.itemsize for _, s, _ in specs)


def build_lora(path: Path, dim: int, ffn: int, layers: int, rank: int) -> None:
    """A LightX2V-layout LoRA on every block linear (official names, `diffusion_model.` prefix)."""
    from safetensors.torch import save_file

    shapes = {**{f"{a}.{p}": (dim, dim) for a in ("self_attn", "cross_attn") for p in "qkvo"},
              "ffn.0": (ffn, dim), "ffn.2": (dim, ffn)}
    sd = {}
    for i in range(layers):
        for m, (out, inp) in shapes.items():
            key = f"diffusion_model.blocks.{i}.{m}"
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, inp, dtype=torch.bfloat16) * 0.01
            sd[f"{key}.lora_up.weight"] = torch.randn(out, rank, dtype=torch.bfloat16) * 0.01
    save_file(sd, str(path))


def peak_rss(cmd: list[str]) -> tuple[int, float]:
    """(peak RSS of `cmd` in bytes, seconds), measured by a fresh parent process."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024, time.perf_counter() - t0  # ru_maxrss is KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=5120)
    p.add_argument("--ffn", type=int, default=13824)
    p.add_argument("--heads", type=int, default=40)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--workdir", default=None, help="where to build (default: a temp folder, removed at the end)")
    p.add_argument("--skip-naive", action="store_true", help="skip load_file + save_file (it needs the model's size in RAM)")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="convert_rss-"))
    src, lora = work / "model", work / "lora.safetensors"
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    try:
        size = build_model(src, args.dim, args.ffn, args.heads, args.layers, dtype)
        build_lora(lora, args.dim, args.ffn, args.layers, args.lora_rank)
        print(f"model: dim {args.dim}, ffn {args.ffn}, {args.layers} layers, {args.dtype}: {size / 1e9:.2f} GB of tensors")
        convert = [sys.executable, "-m", "lightx2v.cli.main", "convert", str(src)]
        cases = {
            "import only (floor)": [sys.executable, "-c", "import lightx2v.loading.convert"],
            "-> blocks": [*convert, str(work / "out"), "--to", "blocks"],
            "-> diffusers --dtype fp16": [*convert, str(work / "out"), "--to", "diffusers", "--dtype", "fp16"],
            "-> official, 1 GB shards": [*convert, str(work / "out"), "--shard-size", "1GB"],
            f"--quant w8a8-int8 --lora (rank {args.lora_rank})": [*convert, str(work / "out"), "--quant", "w8a8-int8",
                                                                  "--lora", f"{lora}:0.8"],
        }
        if not args.skip_naive:
            cases["naive load_file + save_file"] = [sys.executable, "-c", NAIVE,
                                                    str(src / "diffusion_pytorch_model.safetensors"), str(work / "out.st")]
        print(f"{'case':<40} {'peak RSS':>10} {'/ model':>8} {'seconds':>8}")
        for name, cmd in cases.items():
            rss, secs = peak_rss(cmd)
            print(f"{name:<40} {rss / 1e9:>8.2f} GB {rss / size:>8.3f} {secs:>8.1f}", flush=True)
            shutil.rmtree(work / "out", ignore_errors=True)
            (work / "out.st").unlink(missing_ok=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
