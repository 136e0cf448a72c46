"""The stages after the denoise at full size: VAE decode (fp32 vs bf16, channels-last) and the save.

One device call: the Wan2.1 VAE (Wan2.1_VAE.pth's architecture) with random weights (lightx2v's
`randomize_`), normalized latents for 480P x 81 frames ([1, 16, 21, 60, 104]); decode time (CUDA
events, median of --repeat after a warm-up), peak GPU memory, and the relative L2 error of the
bf16 decode against fp32; then the frames to uint8 on the GPU and the mp4 save (libx264 crf 17,
each preset), timed on the host.

    python benchmarks/vae_save.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch


def timed(fn, repeat: int):
    out = fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); out = fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1000)
    return out, sorted(times)[len(times) // 2]


def main() -> None:
    from lightx2v.io.video import ffmpeg_exe
    from lightx2v.models.wan.tiny import randomize_
    from lightx2v.models.wan.vae import WanVAE, WanVAEConfig
    from lightx2v.pipelines.base import video_to_uint8

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--commit", default="?")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "commit": args.commit,
           "frames": args.frames, "size": "832x480"}
    vae = randomize_(WanVAE(WanVAEConfig()), seed=0).cuda().eval()
    lat = torch.randn(1, 16, (args.frames - 1) // 4 + 1, 60, 104, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    runs = {}
    for name, dtype, cl in (("fp32", torch.float32, False), ("bf16", torch.bfloat16, False),
                            ("bf16_channels_last", torch.bfloat16, True), ("fp32_tf32", torch.float32, False)):
        torch.backends.cudnn.allow_tf32 = name == "fp32_tf32"
        m = vae.to(dtype)
        for prm in m.parameters():  # the 5-D conv weights channels-last (Module.to refuses the others)
            if prm.ndim == 5:
                prm.data = prm.data.contiguous(memory_format=torch.channels_last_3d if cl else torch.contiguous_format)
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            video, sec = timed(lambda: m.decode(lat.to(dtype)), args.repeat)
        runs[name] = video.float()
        res[f"decode_{name}_s"] = sec
        res[f"decode_{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(name, f"{sec:.3f}s", f"{res[f'decode_{name}_peak_gib']:.1f} GiB", flush=True)
    ref = runs["fp32"].double()
    for name in runs:
        res[f"decode_{name}_rel_err"] = float((runs[name].double() - ref).norm() / ref.norm())
    t = time.perf_counter()
    u8 = video_to_uint8(runs["fp32"])
    res["to_uint8_s"] = time.perf_counter() - t
    f, h, w, _ = u8.shape
    raw = u8.tobytes()
    try:
        exe = ffmpeg_exe()
    except ImportError:  # no imageio-ffmpeg on this machine: the save is timed where it is installed
        exe = None
    for preset in ("medium", "veryfast") if exe else ():
        dst = Path(tempfile.mkdtemp()) / "v.mp4"
        t = time.perf_counter()
        subprocess.run([exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
                        "-r", "16", "-i", "-", "-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p", "-crf", "17",
                        "-movflags", "+faststart", str(dst)], input=raw, check=True)
        res[f"save_{preset}_s"] = time.perf_counter() - t
        res[f"save_{preset}_kb"] = os.path.getsize(dst) // 1000
    res["host_cpus"] = os.cpu_count()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vae_save.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
