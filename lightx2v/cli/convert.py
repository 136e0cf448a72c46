"""`lightx2v convert SRC DST`: a DiT checkpoint into another layout, dtype or quantization.

The work is lightx2v.loading.convert.convert_dit (streaming, atomic). This file only parses the
command line: LoRA specs and the shard size are checked here so that a bad one is one line.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings

from lightx2v.errors import CheckpointError, InputError

HELP = ("convert a DiT checkpoint (any layout lightx2v reads) to the official, diffusers or block-split "
        "layout, optionally merging LoRAs, casting or quantizing; streams tensor by tensor (low memory)")

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'5GB', '500MB', '2GiB', '1000000' -> bytes (decimal units; KiB/MiB/GiB binary)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m[2].lower() if m else None
    if m is None or unit not in _UNITS or float(m[1]) * _UNITS[unit] < 1:
        raise InputError(f"--shard-size {text!r}: expected a size such as 5GB, 500MB or 2GiB")
    return int(float(m[1]) * _UNITS[unit])


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lightx2v.choices import CONVERT_LAYOUTS as LAYOUTS  # torch-free: --help
    from lightx2v.choices import DTYPES, QUANT_CHOICES

    p.add_argument("src", help="DiT source: an official or diffusers model folder, a .safetensors file (official, "
                               "ComfyUI or diffusers keys; int8/fp8 too), an index, or a block-split folder")
    p.add_argument("dst", help="output folder (created; must not exist, or be empty)")
    p.add_argument("--to", default="official", choices=LAYOUTS,
                   help="official: diffusion_pytorch_model*.safetensors; diffusers: WanTransformer3DModel folder; "
                        "blocks: block_<i>.safetensors + non_block.safetensors")
    p.add_argument("--quant", default=None, choices=QUANT_CHOICES, help="quantize the DiT's block linears")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="merge a LoRA into the weights before quantizing (repeatable; strength 1.0 by default)")
    p.add_argument("--lora-allow-unmatched", action="store_true",
                   help="warn instead of failing when a LoRA key matches no weight of the model")
    p.add_argument("--dtype", default=None, choices=tuple(DTYPES),
                   help="cast floating tensors (default: keep the source's); the ones Wan keeps in fp32 "
                        "(time embedding, modulations, norms) stay fp32")
    p.add_argument("--shard-size", default="5GB", help="largest output file (official/diffusers layouts)")


def run(args: argparse.Namespace) -> int:
    from lightx2v.loading.convert import convert_dit
    from lightx2v.loading.lora import parse_lora_spec

    loras = [parse_lora_spec(spec) for spec in args.lora]
    missing = [str(p) for p, _ in loras if not p.is_file()]
    if missing:
        raise InputError(f"LoRA file not found: {missing[0]}")
    shard_size = parse_bytes(args.shard_size)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = convert_dit(args.src, args.dst, to=args.to, quant=args.quant, loras=loras,
                                 allow_unmatched=args.lora_allow_unmatched, dtype=args.dtype,
                                 shard_size=shard_size, log=print)
    except CheckpointError as exc:
        if "allow_unmatched=True" in str(exc):  # the library's wording; name the flag instead
            raise CheckpointError(str(exc).replace("pass allow_unmatched=True", "pass --lora-allow-unmatched")) from None
        raise
    for w in caught:
        print(f"lightx2v: warning: {w.message}", file=sys.stderr)
    extra = [f"quantized {report.quant}"] if report.quant else []
    extra += [f"{len(report.merged)} tensors merged with {len(loras)} LoRA(s)"] if loras else []
    print(f"wrote {report.dst} ({report.layout} layout, {len(report.files)} files, {report.num_tensors} tensors, "
          f"{report.total_bytes / 1e9:.2f} GB{', ' if extra else ''}{', '.join(extra)})")
    for note in report.notes:
        print(f"  note: {note}")
    return 0
