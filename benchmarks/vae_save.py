"""The stages after the denoise at full size: the VAE decode (precision, layout, compile) and the save.

One device call, the Wan2.1 VAE (Wan2.1_VAE.pth's architecture) with random weights (lightx2v's
`randomize_`), normalized latents for 480P x 81 frames ([1, 16, 21, 60, 104]):

1. decode cases: fp32 (cuDNN TF32 on, PyTorch's default for convolutions: the pipeline's default)
   and bf16, each with the channels-last decoder off / on and the regional compile of the
   decoder's blocks off / on (`CompileConfig(vae=True)`; its first call, which compiles, is
   reported apart as `first_call_s`). Per case: wall time (median of --repeat after a warm-up,
   synchronized), peak GPU memory, relative L2 error against the strict fp32 decode (TF32 off).
2. the save, per --save-dtypes: the decode alone; the decode with the streamed mp4 save
   (lightx2v.io.stream.VideoStream, as the pipeline runs it: uint8 on the GPU, pinned copies, a
   writer thread) from decode start to file in place (`stream_total_s`; the save's added wall
   time is `stream_added_s` = that minus the decode alone); and the old save after the decode
   (`save_after_decode_s`: io/output.save of the whole video).

Cases run in that order and each is timed alone; a failing case is recorded and the run goes on;
the JSON is rewritten after every case, and cases that would start after --budget-s are skipped.

    python benchmarks/vae_save.py --out $OUT --ffmpeg /path/to/ffmpeg     # (or IMAGEIO_FFMPEG_EXE)
    python benchmarks/vae_save.py --tiny --out /tmp/b                     # the logic, on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightx2v, not an installed one


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.cuda = torch.cuda.is_available() and not args.tiny
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.t_start = time.perf_counter()
        self.res: dict = {"commit": args.commit, "torch": torch.__version__, "host_cpus": os.cpu_count(),
                          "device": torch.cuda.get_device_name() if self.cuda else "cpu", "tiny": args.tiny,
                          "cases": {}, "save": {}}
        self.ref: torch.Tensor | None = None  # the strict fp32 decode
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)

    # -- helpers ---------------------------------------------------------------------------------
    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    def over_budget(self) -> bool:
        return time.perf_counter() - self.t_start > self.args.budget_s

    def dump(self) -> None:
        self.res["elapsed_s"] = time.perf_counter() - self.t_start
        (self.out / "vae_save.json").write_text(json.dumps(self.res, indent=2))

    def timed(self, fn, repeat=None):
        """(result of the warm-up call, its seconds, median seconds of `repeat` (--repeat) calls or None)."""
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        first = time.perf_counter() - t
        times = []
        for _ in range(self.args.repeat if repeat is None else repeat):
            t = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return out, first, (sorted(times)[len(times) // 2] if times else None)

    # -- the model -------------------------------------------------------------------------------
    def make_vae(self, dtype: torch.dtype, channels_last: bool, compiled: bool):
        from lightx2v.config import CompileConfig
        from lightx2v.models.wan.tiny import randomize_
        from lightx2v.models.wan.vae import WanVAE, WanVAEConfig, tiny_vae_config
        from lightx2v.runtime.vae_compile import compile_vae

        cfg = tiny_vae_config() if self.args.tiny else WanVAEConfig()
        vae = randomize_(WanVAE(cfg), seed=0).to(self.device, dtype).eval()
        vae.set_memory_format(channels_last)
        if compiled:
            torch._dynamo.reset()  # each compiled case from scratch (its own graphs, its own first call)
            backend = "eager" if self.args.tiny else "inductor"  # the CPU check only traces
            compile_vae(vae, CompileConfig(enabled=True, vae=True, backend=backend))
        return vae

    def latents(self) -> torch.Tensor:
        t = (self.args.frames - 1) // 4 + 1
        h, w = (4, 6) if self.args.tiny else (60, 104)
        g = torch.Generator().manual_seed(0)
        return torch.randn(1, 16, t, h, w, generator=g).to(self.device)

    # -- 1. decode cases ----------------------------------------------------------------------------
    def decode_cases(self, compiled: bool) -> None:
        """The strict fp32 reference (first time only), then the four eager or compiled cases."""
        lat = self.latents()
        self.res["latents"] = list(lat.shape)
        if self.ref is None:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            self.ref = self.run_case("fp32_strict", torch.float32, False, False, lat, repeat=0)  # ~10 s a call
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions (the pipeline's)
        order = (("bf16", True), ("bf16", False), ("fp32", True), ("fp32", False)) if compiled else \
                (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
        for dtype_name, cl in order:
            name = f"{dtype_name}{'_cl' if cl else ''}{'_compiled' if compiled else ''}"
            dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
            self.run_case(name, dtype, cl, compiled, lat)

    def run_case(self, name, dtype, cl, compiled, lat, repeat=None):
        ref = self.ref
        if self.over_budget():
            self.res["cases"][name] = {"skipped": f"past --budget-s {self.args.budget_s}"}
            self.dump()
            return None
        print(f"case {name} ...", flush=True)
        entry = self.res["cases"][name] = {"dtype": str(dtype), "channels_last": cl, "compiled": compiled,
                                           "tf32": torch.backends.cudnn.allow_tf32}
        video = None
        try:
            vae = self.make_vae(dtype, cl, compiled)
            self.reset_peak()
            with torch.no_grad():
                video, first, sec = self.timed(lambda: vae.decode(lat.to(dtype)), repeat)
            entry.update(decode_s=first if sec is None else sec, first_call_s=first, peak_gib=self.peak_gib())
            if compiled:
                entry["compile_s_approx"] = first - entry["decode_s"]
            if ref is not None:
                r = ref.double()
                entry["rel_err_vs_fp32_strict"] = float((video.double() - r).norm() / r.norm())
            print(f"  {json.dumps(entry)}", flush=True)
        except Exception as exc:  # record and go on
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            entry["traceback"] = traceback.format_exc()[-4000:]
            print(f"  failed: {entry['error']}", flush=True)
        self.dump()
        return video

    # -- 2. the save ------------------------------------------------------------------------------
    def save_cases(self) -> None:
        from lightx2v.io.video import ffmpeg_exe

        try:
            exe = ffmpeg_exe()
            ver = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
            self.res["ffmpeg"] = {"path": exe, "version": ver}
        except Exception as exc:
            self.res["ffmpeg"] = {"error": f"{type(exc).__name__}: {exc}"}
            self.dump()
            return
        torch.backends.cudnn.allow_tf32 = True
        for spec in self.args.save_dtypes.split(","):
            if self.over_budget():
                self.res["save"][spec] = {"skipped": f"past --budget-s {self.args.budget_s}"}
                continue
            print(f"save {spec} ...", flush=True)
            entry = self.res["save"][spec] = {}
            try:
                self.save_case(spec, entry)
                print(f"  {json.dumps(entry)}", flush=True)
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                entry["traceback"] = traceback.format_exc()[-4000:]
                print(f"  failed: {entry['error']}", flush=True)
            self.dump()

    def save_case(self, spec: str, entry: dict) -> None:
        """spec: fp32 | bf16 | fp32_cl | bf16_cl (eager)."""
        from lightx2v.io.output import save
        from lightx2v.io.stream import VideoStream
        from lightx2v.pipelines.base import video_to_frames, video_to_uint8, video_to_uint8_tensor

        dtype = torch.bfloat16 if spec.startswith("bf16") else torch.float32
        vae = self.make_vae(dtype, spec.endswith("_cl"), False)
        lat = self.latents().to(dtype)
        h, w = lat.shape[3] * 8, lat.shape[4] * 8
        folder = Path(tempfile.mkdtemp(prefix="vae-save-"))

        def decode_only():
            chunks = [c for c in vae.decode_chunks(lat)]
            video = torch.cat(chunks, dim=2)
            self.sync()
            return video

        def streamed(i: int):
            t0 = time.perf_counter()
            s = VideoStream(folder / f"s{i}.mp4", num_frames=self.args.frames).open(w, h)
            chunks = []
            for c in vae.decode_chunks(lat):
                chunks.append(c)
                s.write(video_to_uint8_tensor(c))
            video = torch.cat(chunks, dim=2)
            self.sync()
            t_dec = time.perf_counter()
            video_to_frames(video)  # result.frames, as the pipeline makes it (overlaps the encoder's tail)
            s.close()
            t_end = time.perf_counter()
            return t_dec - t0, t_end - t0, t_end - t_dec

        with torch.no_grad():
            video, _, entry["decode_only_s"] = self.timed(decode_only)
            runs = [streamed(i) for i in range(self.args.repeat + 1)][1:]  # the first warms up
            runs.sort(key=lambda r: r[1])
            mid = runs[len(runs) // 2]
            entry.update(stream_decode_s=mid[0], stream_total_s=mid[1], stream_tail_s=mid[2],
                         stream_added_s=mid[1] - entry["decode_only_s"])
            entry["stream_kb"] = os.path.getsize(folder / "s1.mp4") // 1000
            times = []
            for i in range(max(1, self.args.repeat - 1)):
                t = time.perf_counter()
                frames = video_to_frames(video)
                save(video_to_uint8(video), folder / f"n{i}.mp4")
                times.append(time.perf_counter() - t)
                del frames
            entry["save_after_decode_s"] = sorted(times)[len(times) // 2]
            entry["frames"] = int(video.shape[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--out", default="bench_out", help="folder of vae_save.json")
    ap.add_argument("--commit", default="?")
    ap.add_argument("--ffmpeg", default=None, help="the ffmpeg binary (sets IMAGEIO_FFMPEG_EXE; default: "
                                                   "IMAGEIO_FFMPEG_EXE, else imageio-ffmpeg's)")
    ap.add_argument("--save-dtypes", default="fp32,bf16_cl", help="decode configs of the save cases (comma-separated)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled decode cases")
    ap.add_argument("--budget-s", type=float, default=200.0, help="start no case after this many seconds")
    ap.add_argument("--tiny", action="store_true", help="a tiny VAE on the CPU: checks the script's logic")
    args = ap.parse_args()
    if args.ffmpeg:
        os.environ["IMAGEIO_FFMPEG_EXE"] = str(Path(args.ffmpeg).resolve())
    if args.tiny and args.frames == 81:
        args.frames = 9
    b = Bench(args)
    b.res["frames"] = args.frames
    b.decode_cases(compiled=False)
    b.save_cases()
    if not args.no_compile:
        b.decode_cases(compiled=True)  # last: each first call compiles (minutes, maybe)
    b.dump()
    print(json.dumps({k: v for k, v in b.res.items()}, indent=2, default=str)[:20000])


if __name__ == "__main__":
    main()
