"""`lightx2v generate`: one video from a prompt."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lightx2v.errors import InputError

HELP = "generate a video from a prompt (and an image for i2v, two for flf2v)"


def parse_size(text: str) -> tuple[int, int]:
    """'832x480' (or Wan's '832*480') -> (width, height)."""
    for sep in ("x", "*", "X"):
        if sep in text:
            w, _, h = text.partition(sep)
            try:
                return int(w), int(h)
            except ValueError:
                break
    raise InputError(f"size must be WIDTHxHEIGHT such as 832x480, got {text!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lightx2v.models.registry import all_presets, all_tasks
    from lightx2v.ops.attention import list_backends
    from lightx2v.schedulers import SOLVER_NAMES

    p.add_argument("--model-path", required=True, help="model folder (any layout of a supported family) or Hugging Face repo id")
    p.add_argument("--task", default=None, choices=all_tasks(),
                   help="t2v (text-to-video), i2v (image-to-video), flf2v (first-last-frame-to-video); default: the checkpoint's")
    p.add_argument("--image", default=None, help="first frame for i2v / flf2v (PNG, JPEG, WebP)")
    p.add_argument("--last-image", default=None, help="last frame for flf2v")
    p.add_argument("--resize-mode", default="area", choices=("area", "crop", "pad"),
                   help="i2v: area keeps the image's aspect ratio at the --size area (sides multiples of 16); "
                        "crop / pad give exactly --size, cropping or padding the image")
    p.add_argument("--prompt", required=True, help="what the video shows")
    p.add_argument("--negative-prompt", default=None, help="what to avoid (default: Wan's default negative prompt)")
    p.add_argument("--size", default="832x480", help="WIDTHxHEIGHT, both multiples of 16 (832x480, 480x832, 1280x720, 720x1280)")
    p.add_argument("--frames", type=int, default=81, help="number of frames, 4k+1")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the checkpoint's, 50 for Wan2.1)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the checkpoint's, 5.0)")
    p.add_argument("--shift", type=float, default=None, help="sigma shift of the flow schedule (default: the checkpoint's)")
    p.add_argument("--solver", default=None, choices=SOLVER_NAMES, help="sampler (default: the checkpoint's: unipc, or distill for 4-step distilled models)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed)")
    p.add_argument("--fps", type=int, default=None, help="frames per second of the mp4 (default 16)")
    p.add_argument("--output", default=None, help="file to write, its format from the extension: .mp4, .webm, .gif, .png (--frames 1); "
                                                 "a folder/ gets the default name inside; /dev/null is written through (default: outputs/wan_<task>_<time>_seed<N>.mp4)")
    p.add_argument("--no-overwrite", action="store_true", help="refuse an existing --output file (default: replace it, with a warning)")
    p.add_argument("--dit-path", default=None, help="DiT weights replacing the folder's: a single .safetensors (LightX2V, ComfyUI, diffusers keys; int8/fp8 quantized too), an index or a block folder")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="merge a LoRA into the DiT (repeatable; strength 1.0 by default)")
    p.add_argument("--lora-allow-unmatched", action="store_true",
                   help="warn instead of failing when a LoRA key matches no weight of the model")
    p.add_argument("--quant", default=None, choices=("w8a8-int8", "w8a8-fp8"),
                   help="quantize the DiT's block linears at load (pre-quantized files need no flag)")
    p.add_argument("--preset", default=None,
                   help="step-distilled preset when the checkpoint does not say it is one: " + ", ".join(all_presets()))
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each DiT block (regional: one short compile on the first run, then faster steps)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu, or auto (cuda if available)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="compute precision of the DiT and text encoder")
    p.add_argument("--attention", default="auto", help=f"attention backend (auto, {', '.join(list_backends())})")
    p.add_argument("--config", default=None, help="JSON file of flag values (keys as the flag names, e.g. {\"steps\": 40}); flags on the command line win")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def apply_config_file(parser: argparse.ArgumentParser, argv: list, args: argparse.Namespace) -> argparse.Namespace:
    """Re-parse with the JSON file's values as defaults, so explicit flags still win."""
    path = Path(args.config)
    try:
        values = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read config file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"config file {path} is not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise InputError(f"config file {path} must hold a JSON object of flag values")
    sub = parser._subparsers._group_actions[0].choices[args.command]  # the subcommand's parser
    known = {a.dest for a in sub._actions if a.dest not in ("help", "config")}
    cleaned = {}
    for k, v in values.items():
        dest = k.lstrip("-").replace("-", "_")
        if dest not in known:
            raise InputError(f"config file {path}: unknown key {k!r}; expected flag names such as {', '.join(sorted(known)[:6])}")
        cleaned[dest] = v
    sub.set_defaults(**cleaned)
    # required flags given by the file are no longer required on the command line
    for a in sub._actions:
        if a.dest in cleaned:
            a.required = False
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from lightx2v import LightX2V
    from lightx2v.config import SamplingParams
    from lightx2v.io.output import check_output
    from lightx2v.io.image import load_image

    width, height = parse_size(args.size)
    if args.output:
        check_output(args.output, args.frames, overwrite=not args.no_overwrite)
    # Validate the request (and read the images) before the (slow) model load.
    image = None if args.image is None else load_image(args.image, "image")
    last = None if args.last_image is None else load_image(args.last_image, "last image")
    if args.task in ("i2v", "flf2v") and image is None:
        raise InputError(f"--task {args.task} needs --image")
    if args.task == "flf2v" and last is None:
        raise InputError("--task flf2v needs --last-image")
    if args.task in ("t2v", "i2v") and last is not None:
        raise InputError(f"--last-image is for --task flf2v, not {args.task}")
    if args.task == "t2v" and image is not None:
        raise InputError("--image is for --task i2v or flf2v, not t2v")
    SamplingParams(prompt=args.prompt, height=height, width=width, num_frames=args.frames,
                   num_inference_steps=args.steps, guidance_scale=args.guidance, shift=args.shift,
                   solver=args.solver, resize_mode=args.resize_mode, seed=args.seed, fps=args.fps).validate()
    from lightx2v.loading.detect import detect
    from lightx2v.loading.hub import resolve_model_path
    from lightx2v.loading.lora import parse_lora_spec

    # the family's size and frame rules, checked before the (slow) load; detection reads no weights
    mc = detect(resolve_model_path(args.model_path), dit_path=args.dit_path, preset=args.preset)
    mc.spec.geometry(mc).check(height, width, args.frames)

    loras = [parse_lora_spec(spec) for spec in args.lora]
    pipe = LightX2V.from_pretrained(args.model_path, device=args.device, dtype=args.dtype,
                                    attention=args.attention, quant=args.quant, task=args.task,
                                    dit_path=args.dit_path, lora=loras, lora_allow_unmatched=args.lora_allow_unmatched,
                                    preset=args.preset, compile=args.compile, progress=not args.quiet)
    result = pipe.generate(
        prompt=args.prompt, negative_prompt=args.negative_prompt, image=image, last_image=last,
        resize_mode=args.resize_mode, height=height, width=width,
        num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance,
        shift=args.shift, solver=args.solver, seed=args.seed, output_type="mp4",
        output_path=args.output, fps=args.fps, overwrite=not args.no_overwrite,
    )
    t = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"wrote {result.path} (seed {result.seed}; {t})", file=sys.stderr)
    print(result.path)
    return 0
