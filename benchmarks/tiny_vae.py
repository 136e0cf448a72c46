"""The tiny VAE (TAEHV taew2_1 / lighttaew2_1) against the full Wan2.1 VAE: decode time and peak memory.

Random weights (timing does not depend on them), the same normalized latents of a 480P x 81-frame
video (and 720P), decoded by: the full VAE in fp32 (the pipeline's default), the full VAE in bf16
channels-last, and the tiny VAE in fp16 (taew2_1's release dtype) and bf16, each in the pipeline's
chunking (one latent frame at a time) and, for the tiny VAE, all frames at once (chunk 0). Median of
`--repeat` after a first call; peak GPU memory above the weights. The video is not compared:
the two decoders are different networks (the tiny one is a distilled approximation; its error
against the full VAE needs the released weights). Results in $OUT/tiny_vae.json.

    python benchmarks/tiny_vae.py --out $OUT --commit <sha>
    python benchmarks/tiny_vae.py --tiny --device cpu --out /tmp/t     # the logic on the CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import traceback
from pathlib import Path

import torch

SHAPES = {"480p": (60, 104), "720p": (90, 160)}  # latent h, w


def build(kind: str, dtype, dev: str, tiny: bool):
    from lightx2v.models.wan.taehv import TinyVAE
    from lightx2v.models.wan.tiny import randomize_
    from lightx2v.models.wan.vae import WanVAE, WanVAEConfig, tiny_vae_config

    if kind == "full":
        vae = randomize_(WanVAE(tiny_vae_config() if tiny else WanVAEConfig()), seed=0)
    else:
        vae = randomize_(TinyVAE(), seed=0)
    return vae.to(dev, dtype).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", default="480p,720p")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and a tiny full VAE (CPU logic check)")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--commit", default="?")
    args = ap.parse_args()
    dev, cuda = args.device, args.device == "cuda"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "commit": args.commit, "date": time.strftime("%Y-%m-%d"), "frames": args.frames}
    cases = [("full VAE fp32", "full", torch.float32, False, 1), ("full VAE bf16 channels-last", "full", torch.bfloat16, True, 1),
             ("tiny VAE fp16", "tiny", torch.float16, False, 1), ("tiny VAE bf16", "tiny", torch.bfloat16, False, 1),
             ("tiny VAE fp16, all frames at once", "tiny", torch.float16, False, 0)]
    rows = []
    for shape in args.shapes.split(","):
        h, w = (4, 6) if args.tiny else SHAPES[shape]
        frames = 9 if args.tiny else args.frames
        lat = torch.randn(1, 16, (frames - 1) // 4 + 1, h, w, generator=torch.Generator().manual_seed(0)).to(dev)
        for name, kind, dtype, cl, chunk in cases:
            row = {"shape": shape, "case": name}
            try:
                vae = build(kind, dtype, dev, args.tiny)
                if cl:
                    vae.set_memory_format(True)
                kw = {"chunk": chunk} if kind == "tiny" else {}
                if cuda:
                    torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated() if cuda else 0
                times = []
                for i in range(args.repeat + 1):
                    t = time.perf_counter()
                    with torch.no_grad():
                        video = vae.decode(lat, **kw)
                    if cuda:
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t)
                row.update(first_s=times[0], s=sorted(times[1:])[len(times[1:]) // 2] if args.repeat else times[0],
                           frames_out=int(video.shape[2]), weights_mib=sum(p.numel() * p.element_size() for p in vae.parameters()) / 2**20,
                           peak_above_weights_gib=(torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else 0.0)
                del vae, video
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                row["traceback"] = traceback.format_exc()[-1500:]
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "traceback"}), flush=True)
            (out / "tiny_vae.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
