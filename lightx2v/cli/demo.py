"""`lightx2v demo`: a whole generation with no download, on a tiny random-weight model.

It writes a tiny Wan2.1 checkpoint in the official layout, then runs it through the same
detection, loading and pipeline code a real model goes through. The video is noise: the
weights are random. It proves the install works end to end.

The checkpoint goes to a temporary folder (`/tmp/lightx2v-demo-*`), removed at the end, on an
error and on Ctrl-C / SIGTERM. `--checkpoint-dir DIR` keeps it in DIR, which must be new or
empty (a model folder is never overwritten): it is written beside DIR and renamed to DIR once complete.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HELP = "run a whole generation on a tiny random-weight model (no download)"
FRAMES, WIDTH, HEIGHT = 17, 256, 144


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="outputs/demo.mp4",
                   help="video to write (.mp4, .webm or .gif; a folder/ gets a default name inside)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="keep the tiny checkpoint in this new or empty folder (default: a temporary folder, removed)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--steps", type=int, default=4, help="denoising steps")


def run(args: argparse.Namespace) -> int:
    from lightx2v.io.atomic import (
        check_new_folder,
        note_removed,
        place_folder,
        test_pause,
    )
    from lightx2v.io.output import check_output

    check_output(args.output, FRAMES)  # before anything is written
    keep = None if args.checkpoint_dir is None else check_new_folder(args.checkpoint_dir, "checkpoint folder")

    from lightx2v import LightX2V
    from lightx2v.models.wan.tiny import write_official_checkpoint

    if keep is not None:
        keep.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{keep.name}.partial-", dir=keep.parent))
    else:
        work = Path(tempfile.mkdtemp(prefix="lightx2v-demo-"))
    try:
        write_official_checkpoint(work)
        test_pause("demo", folder=work)
        ckpt = work
        if keep is not None:
            place_folder(work, keep)
            ckpt = keep
        print(f"wrote a tiny Wan2.1 T2V checkpoint with RANDOM weights (official layout) to {ckpt}", file=sys.stderr)
        pipe = LightX2V.from_pretrained(ckpt, device=args.device, dtype="fp32")
        result = pipe.generate(prompt="a red panda drinking tea in a garden, cinematic", height=HEIGHT, width=WIDTH,
                               num_frames=FRAMES, num_inference_steps=args.steps, seed=0, output_path=args.output)
    except BaseException as exc:
        if work.exists():
            note_removed(exc, f"the temporary folder {work}")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {result.path}: {FRAMES} frames, {WIDTH}x{HEIGHT}, in {result.timings['total']:.1f}s.", file=sys.stderr)
    print("The weights are random, so the video is noise: this checks the install, not the model.", file=sys.stderr)
    print("For a real video, download Wan2.1 (e.g. `hf download Wan-AI/Wan2.1-T2V-1.3B "
          "--local-dir Wan2.1-T2V-1.3B`) and run:\n  lightx2v generate --model-path Wan2.1-T2V-1.3B "
          "--prompt \"...\" --size 832x480 --frames 81 --output out.mp4", file=sys.stderr)
    print(result.path)
    return 0
