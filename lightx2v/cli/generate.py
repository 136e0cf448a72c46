"""`lightx2v generate`: one video from a prompt (or images, from an image model: --task t2i).

Order of work, so that a bad request fails in a second, not after a minutes-long load:
parse flags (and --config) -> engine config (device, dtype, attention, quant: checked) ->
model path (local folder or hub) -> detection (configs and headers only) -> the request checked
against the detected checkpoint (lightx2v.pipelines.request.prepare_request: numbers, images,
task, sizes, solver and step count) -> one summary line -> load -> generate -> save.

Errors about a request field name the flag the user typed (`--steps`, not `num_inference_steps`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from lightx2v.errors import InputError, LightX2VError

HELP = "generate a video from a prompt (and an image for i2v, two for flf2v), or images (t2i, edit)"

# request field -> the flag that sets it (errors name the flag)
FLAGS = {
    "prompt": "--prompt", "negative_prompt": "--negative-prompt", "image": "--image", "last_image": "--last-image",
    "resize_mode": "--resize-mode", "height": "--size height", "width": "--size width", "num_frames": "--frames",
    "num_inference_steps": "--steps", "guidance_scale": "--guidance", "guidance_scale_2": "--guidance-2",
    "shift": "--shift", "solver": "--solver", "seed": "--seed", "fps": "--fps", "output_path": "--output",
    "output_type": "--output", "crf": "--crf", "task": "--task", "lora": "--lora", "lora_high": "--lora-high",
    "lora_low": "--lora-low", "latents": "latents", "tiny_vae": "--tiny-vae", "tiny_vae_kind": "--tiny-vae-kind",
    "offload": "--offload", "offload_buffers": "--offload-buffers", "offload_encoders": "--offload-encoders",
    "text_encoder_device": "--text-encoder-device", "max_vram": "--max-vram", "max_ram": "--max-ram",
    "lazy_load": "--lazy-load", "num_disk_workers": "--num-disk-workers",
    "cache": "--cache", "vae_tile_size": "--vae-tile-size", "chunk_tokens": "--chunk-tokens",
    "num_images": "--num-images", "ulysses": "--ulysses", "ring": "--ring", "cfg_parallel": "--cfg-parallel",
    "vae_parallel": "--vae-parallel",
}
# flags whose value is a list (repeatable): a config file may give one string or a list of strings
_LIST_FLAGS = ("lora", "lora_high", "lora_low", "image")


def parse_size(text: str) -> tuple[int, int]:
    """'832x480' (or Wan's '832*480') -> (width, height)."""
    for sep in ("x", "*", "X"):
        if sep in text:
            w, _, h = text.partition(sep)
            try:
                return int(w), int(h)
            except ValueError:
                break
    raise InputError(f"--size must be WIDTHxHEIGHT such as 832x480, got {text!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lightx2v.choices import SOLVER_NAMES  # torch-free: lightx2v --help must not import torch

    add_model_arguments(p)
    p.add_argument("--image", default=None, action="append",
                   help="first frame for i2v / flf2v (PNG, JPEG, WebP); the image to edit (--task edit), repeated "
                        "for several (Qwen-Image-Edit-2509/2511: up to 3)")
    p.add_argument("--last-image", default=None, help="last frame for flf2v")
    p.add_argument("--resize-mode", default="area", choices=("area", "crop", "pad"),
                   help="i2v: area keeps the image's aspect ratio at the --size area (sides multiples of 16); "
                        "crop / pad give exactly --size, cropping or padding the image")
    p.add_argument("--prompt", default=None, help="what the video shows (required; may come from --config)")
    p.add_argument("--negative-prompt", default=None, help="what to avoid (default: the checkpoint's default negative prompt)")
    p.add_argument("--size", default=None,
                   help="WIDTHxHEIGHT, multiples of 16 (Wan2.2 TI2V-5B: 32) (default: the checkpoint's: 832x480 for "
                        "Wan2.1, 1280x720 for Wan2.2 A14B, 1280x704 for TI2V-5B)")
    p.add_argument("--frames", type=int, default=None,
                   help="number of frames, 4k+1 (default: the checkpoint's: 81; Wan2.2 TI2V-5B 121)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the checkpoint's, 50 for Wan2.1)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the checkpoint's, 5.0)")
    p.add_argument("--guidance-2", type=float, default=None,
                   help="guidance scale of a second (low-noise) expert, for two-expert models (default: the checkpoint's)")
    p.add_argument("--shift", type=float, default=None, help="sigma shift of the flow schedule (default: the checkpoint's)")
    p.add_argument("--solver", default=None, choices=SOLVER_NAMES, help="sampler (default: the checkpoint's: unipc, or distill for 4-step distilled models)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed)")
    p.add_argument("--fps", type=int, default=None, help="frames per second of the video (default: the checkpoint's, 16)")
    p.add_argument("--output", default=None, help="file to write, its format from the extension: .mp4, .webm, .gif, or the images "
                                                 ".png, .webp, .jpg (--frames 1; an image model: always); a folder/ gets the default "
                                                 "name inside; /dev/null is written through (default: outputs/wan_<task>_<time>_seed<N>.mp4, "
                                                 "an image model's outputs/<family>_t2i_<time>_seed<N>.png)")
    p.add_argument("--num-images", type=int, default=None, metavar="N",
                   help="image models: N images from the prompt, one batch (as diffusers' num_images_per_prompt), "
                        "written as NAME_0.png ... NAME_{N-1}.png (default 1: NAME.png)")
    p.add_argument("--crf", type=int, default=None,
                   help="video quality, 0 (best, largest) to 51 (default: 17 for .mp4, 30 for .webm)")
    p.add_argument("--no-overwrite", action="store_true", help="refuse an existing --output file (default: replace it, with a warning)")
    add_engine_arguments(p)
    add_parallel_arguments(p)
    p.add_argument("--force", action="store_true",
                   help="run a request far outside what the model was trained on (over 4x its trained pixels or "
                        "frames, over 1000 steps); the model's hard limits and the memory check still apply")
    p.add_argument("--config", default=None,
                   help="JSON file of flag values (keys as the flag names, e.g. {\"steps\": 40, \"lora\": [\"a.safetensors:0.8\"]}); "
                        "flags on the command line win")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout (path, seed, timings, stats, settings)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model-path and --task (shared with `serve`)."""
    from lightx2v.models.registry import all_tasks

    p.add_argument("--model-path", default=None,
                   help="model folder (any layout of a supported family) or Hugging Face repo id (required; may come from --config)")
    p.add_argument("--task", default=None, choices=all_tasks(),
                   help="t2v (text-to-video), i2v (image-to-video), flf2v (first-last-frame-to-video), ti2v (Wan2.2 TI2V-5B: text, or image with --image, to video), t2i (Qwen-Image: text-to-image), edit (Qwen-Image-Edit*: --image to edit); default: the checkpoint's")


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """How the model is loaded and run: weights, LoRAs, quantization, placement, kernels, device
    (shared with `serve`, so every engine flag of `generate` exists there too; `engine_from_args`
    reads them)."""
    # torch-free (lightx2v --help must not import torch): name lists and the families' manifests
    from lightx2v.choices import ATTENTION_BACKENDS, KERNELS, QUANT_CHOICES
    from lightx2v.models.registry import all_presets

    p.add_argument("--dit-path", default=None, help="DiT weights replacing the folder's: a single .safetensors (LightX2V, ComfyUI, diffusers keys; int8/fp8 quantized too), an index or a block folder; for a two-expert model (Wan2.2 A14B) the high-noise expert")
    p.add_argument("--dit-path-2", default=None, help="the low-noise expert's DiT weights replacing the folder's, for a two-expert model (Wan2.2 A14B); any file --dit-path takes")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="merge a LoRA into the DiT, both experts of a two-expert model (repeatable; strength 1.0 "
                        "by default); a Wan2.2-Lightning folder gives each expert its file, and a file named "
                        "..._high_noise_lora_... goes to that expert only (with a warning)")
    p.add_argument("--lora-high", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="merge a LoRA into the high-noise expert only (Wan2.2 A14B; repeatable)")
    p.add_argument("--lora-low", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="merge a LoRA into the low-noise expert only (Wan2.2 A14B; repeatable)")
    p.add_argument("--lora-allow-unmatched", action="store_true",
                   help="warn instead of failing when a LoRA key matches no weight of the model")
    p.add_argument("--quant", default=None, choices=QUANT_CHOICES,
                   help="quantize the DiT's block linears at load (pre-quantized files need no flag): w8a8-* "
                        "compute with 8-bit activations and GEMMs (fp8: sm89+), w8a16-* dequantize the weights")
    p.add_argument("--quant-text-encoder", default=None, choices=QUANT_CHOICES,
                   help="quantize the text encoder's block linears (umt5-xxl: 11 GB -> ~5.7 GB in 8 bits)")
    p.add_argument("--quant-image-encoder", default=None, choices=QUANT_CHOICES,
                   help="quantize the image encoder's (CLIP's) block linears")
    p.add_argument("--preset", default=None,
                   help="step-distilled preset when the checkpoint does not say it is one: " + ", ".join(all_presets()))
    p.add_argument("--offload", default=None, choices=("model", "block", "phase"),
                   help="model: keep the DiTs in host memory, only the running one on the GPU (Wan2.2 A14B: one 14B "
                        "expert at a time, the next prefetched during the step before the switch); block / phase: "
                        "keep the DiTs' blocks in pinned host memory and run them one block (or one phase: "
                        "self-attention, cross-attention, FFN) at a time through a few reused GPU buffers, the next "
                        "copied while the current one computes (a 14B DiT in a few GB; phase: not with --compile)")
    p.add_argument("--max-vram", default=None, metavar="SIZE",
                   help="plan offload / tiling / encoder placement to fit this GPU budget, e.g. 8GB (prints its choice)")
    p.add_argument("--max-ram", default=None, metavar="SIZE",
                   help="with --max-vram: the host memory budget (adds lazy loading when the offloaded weights exceed it)")
    p.add_argument("--offload-encoders", action="store_true",
                   help="keep the text encoder, image encoder and VAE in host memory, each on the GPU only while it runs")
    p.add_argument("--text-encoder-device", default=None, choices=("cpu",),
                   help="run the text encoder on the CPU (never on the GPU)")
    p.add_argument("--offload-buffers", type=int, default=None, metavar="N",
                   help="with --offload block / phase: GPU buffers (default 2; each holds one block or phase)")
    p.add_argument("--lazy-load", action="store_true",
                   help="with --offload block / phase: read the blocks from the checkpoint's files as they are needed "
                        "instead of holding them in host memory (the DiT file in the run's dtype)")
    p.add_argument("--num-disk-workers", type=int, default=None, metavar="N",
                   help="with --lazy-load: threads reading the blocks (default 2)")
    p.add_argument("--cfg-mode", default="sequential", choices=("sequential", "batched"),
                   help="CFG branches as two calls of batch 1 (as the references) or one call of batch 2 (the same "
                        "numbers, more memory)")
    p.add_argument("--tiny-vae", default=None, metavar="FILE",
                   help="decode with a tiny VAE (TAEHV) instead of the VAE, .pth or .safetensors: Wan2.1 and "
                        "Wan2.2 A14B: taew2_1 (madebyollin/taehv) / lighttaew2_1 (lightx2v/Autoencoders); Wan2.2 "
                        "TI2V-5B: taew2_2 / lighttaew2_2; HunyuanVideo-1.5: taehv1_5 / lighttaehy1_5. Much faster, "
                        "a little less faithful; an image task still encodes its image with the VAE")
    # (the names of lightx2v.models.wan.taehv.KINDS, written out: --help imports no torch)
    p.add_argument("--tiny-vae-kind", default=None,
                   choices=("taew2_1", "lighttaew2_1", "taew2_2", "lighttaew2_2", "taehv1_5", "lighttaehy1_5"),
                   help="which release --tiny-vae is (madebyollin's or LightX2V's: they differ in the latents they "
                        "decode, not in their tensors' names; default: told from the weights: fp32 trained weights "
                        "are LightX2V's light*, fp16 ones madebyollin's)")
    p.add_argument("--vae-dtype", default=None, choices=("fp32", "bf16", "fp16"),
                   help="VAE precision (default: fp32, as the references; bf16: 480P x 81 frames decode in 1.79 s "
                        "instead of 2.71 s on an H200, relative error 1.5e-2)")
    p.add_argument("--cache", default=None, metavar="METHOD[:KEY=VALUE,...]",
                   help="feature cache on the DiT's block stack, skipping forwards whose output barely changes: "
                        "teacache, magcache (Wan2.1, published per-model numbers; model=t2v-1.3b|t2v-14b|i2v-480p|"
                        "i2v-720p), firstblock, taylorseer; options such as teacache:threshold=0.2 or "
                        "taylorseer:interval=4,order=2 (docs/caching.md). Not for step-distilled models")
    p.add_argument("--vae-tiling", action="store_true",
                   help="VAE decode and encode in overlapping tiles of --vae-tile-size pixels, blended: the VAE's "
                        "memory bounded by the tile, not the frame (720P on small GPUs); the mp4 is then encoded "
                        "after the decode")
    p.add_argument("--vae-tile-size", type=int, default=None, metavar="PX",
                   help="side of a VAE tile in pixels, a multiple of 64 from 128, overlapping by a quarter "
                        "(default 256: overlap 64, as diffusers); implies --vae-tiling")
    p.add_argument("--chunk-tokens", type=int, default=0, metavar="N",
                   help="run the DiT blocks' token-wise parts N tokens at a time (>= 256; 0: off): less "
                        "than half the activation memory (a small GPU), a little slower")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each DiT block (regional: one short compile on the first run, then faster steps)")
    p.add_argument("--compile-vae", action="store_true",
                   help="also torch.compile the VAE decoder's blocks (implies --compile): ~50-60 s more on the first run "
                        "at 480P, then a faster decode (bf16 480P x 81 frames 1.04 s instead of 1.45 s on an H200)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu, or auto (cuda if available)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="compute precision of the DiT and text encoder")
    p.add_argument("--attention", default="auto",
                   help=f"attention backend (auto, {', '.join(ATTENTION_BACKENDS)}), or one per role: "
                        "self=NAME,cross=NAME (the DiT's self- and cross-attention)")
    p.add_argument("--kernels", default="torch", choices=("auto",) + KERNELS,
                   help="the DiT blocks' elementwise ops (norm + modulation, q/k norm + RoPE, gated residual): torch "
                        "(the reference), triton (fused kernels, CUDA), auto (triton on CUDA, else torch)")
    p.add_argument("--fuse-qkv", action="store_true",
                   help="run self-attention's q, k, v as one GEMM on the same weights (default: three)")


def add_parallel_arguments(p: argparse.ArgumentParser) -> None:
    """Several GPUs (lightx2v.runtime.parallel; docs/parallel.md), under torchrun: generate's only."""
    p.add_argument("--cfg-parallel", action="store_true",
                   help="(torchrun) the two CFG branches on two GPUs, joined once per step")
    p.add_argument("--ulysses", type=int, default=1, metavar="N",
                   help="(torchrun) split the DiT's tokens over N GPUs, heads exchanged around self-attention "
                        "(N divides the model's heads: 40 at 14B, 12 at 1.3B)")
    p.add_argument("--ring", type=int, default=1, metavar="M",
                   help="(torchrun) split the tokens over M more GPUs with ring attention (with --ulysses: "
                        "ulysses inside, ring across)")
    p.add_argument("--vae-parallel", action="store_true",
                   help="(torchrun) split the VAE decode spatially over every GPU")


def detect_from_args(args: argparse.Namespace, progress: bool = True):
    """(ModelConfig, EngineConfig) of the model and engine flags, every check that reads no weight
    done: the engine runs here, the LoRA files exist, the checkpoint is detected and fits --task."""
    from lightx2v.api import check_lora_files, check_task, expert_loras, make_engine, resolve_engine_loras, with_tiny_vae
    from lightx2v.loading.detect import detect
    from lightx2v.loading.hub import resolve_model_path
    from lightx2v.loading.lora import parse_lora_spec
    from lightx2v.runtime.cache import check_cache

    engine = make_engine(device=args.device, dtype=args.dtype, attention=args.attention, quant=args.quant,
                         lora=[parse_lora_spec(spec) for spec in args.lora],
                         lora_per_dit=expert_loras([parse_lora_spec(spec) for spec in args.lora_high],
                                                   [parse_lora_spec(spec) for spec in args.lora_low]),
                         lora_allow_unmatched=args.lora_allow_unmatched, compile=compile_arg(args), offload=args.offload,
                         offload_buffers=args.offload_buffers, lazy_load=args.lazy_load,
                         num_disk_workers=args.num_disk_workers,
                         vae_dtype=args.vae_dtype, cfg_mode=args.cfg_mode, kernels=args.kernels,
                         fuse_qkv=args.fuse_qkv, offload_encoders=args.offload_encoders,
                         text_encoder_device=args.text_encoder_device, quant_text_encoder=args.quant_text_encoder,
                         quant_image_encoder=args.quant_image_encoder, cache=args.cache,
                         vae_tiling=args.vae_tiling or args.vae_tile_size is not None,
                         vae_tile_size=256 if args.vae_tile_size is None else args.vae_tile_size,
                         chunk_tokens=args.chunk_tokens, **parallel_args(args))
    check_lora_files(engine)
    root = resolve_model_path(args.model_path, progress=progress)
    mc = detect(root, dit_path=args.dit_path, preset=args.preset, hints=engine.lora.paths, dit_path_2=args.dit_path_2)
    check_task(mc, args.task)
    check_cache(mc, engine.cache)  # coefficients for this checkpoint, not a distilled model: before loading
    from lightx2v.runtime.parallel import check_parallel

    check_parallel(mc, engine.parallel)  # ulysses against the heads, the degrees against the launch
    mc = with_tiny_vae(mc, args.tiny_vae, args.tiny_vae_kind)  # the file checked before any weight is read
    engine = resolve_engine_loras(mc, engine)  # --lora-high on a one-DiT model, Lightning folders: before loading
    return mc, engine


def compile_arg(args: argparse.Namespace):
    """--compile / --compile-vae as make_engine's `compile` (a bool, or the config compiling the VAE too)."""
    if getattr(args, "compile_vae", False):
        from lightx2v.engine_config import CompileConfig

        return CompileConfig(enabled=True, vae=True)
    return args.compile


def parallel_args(args: argparse.Namespace) -> dict:
    """The parallel keywords of make_engine (commands without the flags: one device)."""
    return {k: getattr(args, k, d) for k, d in (("cfg_parallel", False), ("ulysses", 1), ("ring", 1),
                                                 ("vae_parallel", False))}


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
    actions = {a.dest: a for a in sub._actions if a.dest not in ("help", "config")}
    cleaned = {}
    for k, v in values.items():
        dest = k.lstrip("-").replace("-", "_")
        if dest not in actions:
            raise InputError(f"config file {path}: unknown key {k!r}; expected flag names such as {', '.join(sorted(actions)[:6])}")
        cleaned[dest] = _config_value(path, k, v, actions[dest])
    sub.set_defaults(**cleaned)
    return parser.parse_args(argv)


def _config_value(path: Path, key: str, value, action: argparse.Action):
    """A config file's value, as the flag would have parsed it (one-line error otherwise)."""
    where = f"config file {path}: {key!r}"
    if action.dest in _LIST_FLAGS:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{where} must be a string or a list of strings, got {value!r}")
        return value
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise InputError(f"{where} must be true or false, got {value!r}")
        return value
    if value is None:
        return None
    if action.type in (int, float):
        kind = "an integer" if action.type is int else "a number"
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            if action.type is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            value = action.type(value)
        except ValueError:
            raise InputError(f"{where} must be {kind}, got {value!r}") from None
    elif not isinstance(value, str):
        raise InputError(f"{where} must be a string, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise InputError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def flag_message(exc: LightX2VError) -> str:
    """The error's line with the request field it names replaced by the flag (`--steps`)."""
    msg = str(exc)
    flag = FLAGS.get(exc.field or "")
    if flag and msg.startswith(exc.field + " "):
        return flag + msg[len(exc.field):]
    return msg


def run(args: argparse.Namespace) -> int:
    from lightx2v.runtime.parallel.launch import fail_together
    from lightx2v.runtime.parallel.state import environment

    if environment()[1] != 0:  # (torchrun) rank 0 reports; the others run quietly
        args.quiet, args.json = True, False
    with fail_together():  # (torchrun) an error on one rank stops every rank, one message
        return _run_flags(args)


def _run_flags(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except LightX2VError as exc:
        if exc.field and exc.field in FLAGS:
            renamed = type(exc)(flag_message(exc), field=exc.field)
            raise renamed from None
        raise


def _request(args: argparse.Namespace):
    from lightx2v.config import SamplingParams

    width, height = (None, None) if args.size is None else parse_size(args.size)
    # --image is repeatable: one given is that image, several a list (an edit model's input images)
    image = None if not args.image else args.image[0] if len(args.image) == 1 else list(args.image)
    return SamplingParams(
        prompt=args.prompt, negative_prompt=args.negative_prompt, image=image, last_image=args.last_image,
        resize_mode=args.resize_mode, height=height, width=width, num_frames=args.frames,
        num_inference_steps=args.steps, guidance_scale=args.guidance, guidance_scale_2=args.guidance_2,
        shift=args.shift, solver=args.solver, seed=args.seed, fps=args.fps, output_path=args.output,
        force=args.force, overwrite=not args.no_overwrite, crf=args.crf, num_images=args.num_images,
    )


def _run(args: argparse.Namespace) -> int:
    for flag, value in (("--model-path", args.model_path), ("--prompt", args.prompt)):
        if value is None:
            raise InputError(f"{flag} is required (on the command line or as {flag[2:].replace('-', '_')!r} in --config)")
    from lightx2v.api import LightX2V, planned
    from lightx2v.pipelines.request import prepare_request
    from lightx2v.runtime.memory import check_memory

    params = _request(args)
    params.validate()  # the request alone (numbers, output path), before touching the model folder
    mc, engine = detect_from_args(args, progress=not args.quiet)
    if params.output_path is None and mc.spec.geometry(mc).max_frames == 1:
        # an image model: the API's default is images in memory; the CLI writes them (png) in outputs/
        params = dataclasses.replace(params, output_path="outputs/")
    filled = prepare_request(mc, params)  # every check the detected config allows, before any weight is read
    engine, plan = planned(mc, engine, args.max_vram, args.max_ram, height=filled.height, width=filled.width,
                           num_frames=filled.num_frames, guidance_scale=filled.guidance_scale)
    if plan is not None and not args.quiet:
        print(plan.describe(), file=sys.stderr)
    check_memory(mc, engine, height=filled.height, width=filled.width, num_frames=filled.num_frames,
                 guidance_scale=filled.guidance_scale)  # the weights + the largest stage against this device
    if not args.quiet:
        print(summary_line(mc, engine, filled), file=sys.stderr)
    pipe = LightX2V.from_model_config(mc, engine, progress=not args.quiet)
    result = pipe.run(filled)
    state = getattr(pipe.pipeline, "parallel", None)
    if state is not None and not state.writes_output:
        return 0  # (torchrun) a rank that wrote nothing: rank 0 reports
    if args.json:
        print(json.dumps(result_json(result, filled), indent=2, ensure_ascii=False))
        return 0
    t = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    paths = result.paths or [result.path]
    print(f"wrote {', '.join(map(str, paths))} (seed {result.seed}; {t})", file=sys.stderr)
    print(forwards_line(result.stats), file=sys.stderr)
    for path in paths:
        print(path)
    return 0


def summary_line(mc, engine, p) -> str:
    """One line before the load: what runs, where, how."""
    from lightx2v.ops.attention import resolve_attention

    size = mc.spec.describe(mc).get("size", "")
    dtype = str(engine.dtype).replace("torch.", "")
    names = {r: resolve_attention(engine.attention_for(r), engine.torch_device(), engine.dtype).name
             for r in ("self", "cross")}
    opts = [f"attention {names['self']}" if len(set(names.values())) == 1
            else f"attention self {names['self']}, cross {names['cross']}"]
    if engine.quant.scheme:
        opts.append(f"quant {engine.quant.scheme}")
    if engine.lora.count:
        lora = engine.lora
        per = [f"{len(lora.loras)} every DiT"] * bool(lora.loras) + [f"{len(v)} {k}" for k, v in lora.per_dit.items()]
        opts.append(f"{lora.count} LoRA(s) {lora.mode}" + (f" ({', '.join(per)})" if lora.per_dit else ""))
    if engine.kernels != "torch":
        from lightx2v.ops.fused import resolve_fused

        opts.append(f"kernels {resolve_fused(engine.kernels, engine.torch_device(), engine.dtype).name}")
    if engine.cache.enabled:
        opts.append(f"cache {engine.cache.method}")
    if engine.compile.enabled:
        opts.append("compile (DiT + VAE)" if engine.compile.vae else "compile")
    if engine.offload.granularity is not None:
        opts.append(f"offload {engine.offload.granularity}" + (" (lazy load)" if engine.offload.lazy_load else ""))
    if engine.offload_encoders:
        opts.append("encoders offloaded")
    if engine.text_encoder_device:
        opts.append(f"text encoder on {engine.text_encoder_device}")
    par = engine.parallel
    if par.enabled:  # (parallel) the degrees of the launch
        opts.append(" x ".join(f"{k} {v}" for k, v in (("cfg", par.cfg), ("ulysses", par.ulysses), ("ring", par.ring))
                               if v > 1) + " ranks" * (par.world > 1) + ", vae parallel" * par.vae_parallel)
    if mc.distill is not None:
        opts.append("step-distilled")
    if mc.tiny_vae is not None:
        opts.append(f"tiny VAE {mc.tiny_vae.kind}")
    n = p.num_images or 1
    count = f"{n} image{'s' * (n > 1)}" if mc.spec.geometry(mc).max_frames == 1 else f"{p.num_frames} frames"
    return (f"lightx2v: {mc.spec.title} {mc.task} {size} ({mc.layout}) on {engine.device}, {dtype}, {', '.join(opts)}; "
            f"{p.width}x{p.height}, {count}, {p.num_inference_steps} steps, {p.solver}, "
            f"guidance {p.guidance_scale:g}, shift {p.shift:g}")


def forwards_line(stats: dict) -> str:
    """What the DiT did: 'DiT forwards: 62 run, 38 skipped by the cache' (without a cache: the count run)."""
    line = f"DiT forwards: {stats.get('model_calls', 0)} run"
    if "model_calls_skipped" in stats:
        line += f", {stats['model_calls_skipped']} skipped by the cache"
    return line


def result_json(result, p) -> dict:
    """What `--json` prints: the file, the seed, timings, stats and the settings used."""
    settings = {k: v for k, v in p.to_dict().items() if k not in ("image", "last_image", "latents")}
    settings["image"] = None if p.image is None else "given"
    settings["last_image"] = None if p.last_image is None else "given"
    out = {"path": result.path, "seed": result.seed, "timings": result.timings, "stats": result.stats,
           "settings": settings}
    if result.paths is not None and len(result.paths) > 1:
        out["paths"] = result.paths  # several images: NAME_0.png ... (path: the first)
    return out
