"""`lightx2v demo`: a whole generation with no download, on a tiny random-weight model.

It writes a tiny Wan2.1 checkpoint in the official layout, then runs it through the same
detection, loading and pipeline code a real model goes through. The video is noise: the
weights are random. It proves the install works end to end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HELP = "run a whole generation on a tiny random-weight model (no download)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="outputs/demo.mp4", help="mp4 path to write")
    p.add_argument("--checkpoint-dir", default=None, help="keep the tiny checkpoint in this folder (default: a temporary folder)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--steps", type=int, default=4, help="denoising steps")


def run(args: argparse.Namespace) -> int:
    from lightx2v import LightX2V
    from lightx2v.models.wan.tiny import write_official_checkpoint

    with tempfile.TemporaryDirectory(prefix="lightx2v-demo-") as tmp:
        ckpt = Path(args.checkpoint_dir or tmp)
        write_official_checkpoint(ckpt)
        print(f"wrote a tiny Wan2.1 T2V checkpoint with RANDOM weights (official layout) to {ckpt}", file=sys.stderr)
        pipe = LightX2V.from_pretrained(ckpt, device=args.device, dtype="fp32")
        result = pipe.generate(prompt="a red panda drinking tea in a garden, cinematic", height=144, width=256,
                               num_frames=17, num_inference_steps=args.steps, seed=0, output_path=args.output)
    print(f"wrote {result.path}: 17 frames, 256x144, in {result.timings['total']:.1f}s.", file=sys.stderr)
    print("The weights are random, so the video is noise: this checks the install, not the model.", file=sys.stderr)
    print("For a real video, download Wan2.1 (e.g. `huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B "
          "--local-dir Wan2.1-T2V-1.3B`) and run:\n  lightx2v generate --model-path Wan2.1-T2V-1.3B "
          "--prompt \"...\" --size 832x480 --frames 81 --output out.mp4", file=sys.stderr)
    print(result.path)
    return 0
