"""The VAE's spatial tiling at full size: peak memory, time and error against the whole-frame path.

One device call, the real architectures with random weights (lightx2v's `randomize_`; the errors
are those of random weights, a pessimistic case, not of the released VAEs):

* decode: Wan2.1 VAE at 1280x720 x 81 frames ([1, 16, 21, 90, 160]) and the Wan2.2 VAE at 1280x704
  x 121 frames ([1, 48, 31, 44, 80]); fp32 and bf16 (channels-last, as on CUDA by default); untiled
  and tiled (--tile, default 256 px, overlap a quarter). Per case: peak GPU memory
  (max_memory_allocated), wall time (Wan2.1: the second of two calls; Wan2.2 and the encode: one
  call), relative L2 and max abs difference against the untiled decode of the same precision.
* "frame-major": the tiled decode in the other order (every tile inside each latent frame, each
  tile's causal cache alive across frames), peak memory only: why vae_tiling runs tile by tile.
* encode: the Wan2.1 VAE encoding 1280x720 x 81 frames (an i2v conditioning video), untiled / tiled.
* compile (--compile): CompileConfig(vae=True) with inductor, tiled: first call (compiles), second
  call, and dynamo's graph count after each (tiles of one size must not add graphs).

    python benchmarks/vae_tiling.py --out $OUT [--cases decode21,frame_major,decode22,encode21,compile]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightx2v, not an installed one

from lightx2v.models.wan.tiny import randomize_  # noqa: E402
from lightx2v.models.wan.vae import WanVAE, WanVAEConfig  # noqa: E402
from lightx2v.models.wan.vae22 import Wan22VAE, Wan22VAEConfig  # noqa: E402
from lightx2v.models.wan.vae_blocks import CausalCache  # noqa: E402
from lightx2v.models.wan.vae_tiling import VAETiling  # noqa: E402

DEV = torch.device("cuda")


def gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30


def reset() -> None:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def make(kind: str, dtype: torch.dtype):
    vae = (WanVAE(WanVAEConfig()) if kind == "wan2.1" else Wan22VAE(Wan22VAEConfig()))
    return randomize_(vae, seed=0).to(DEV, dtype).eval().set_memory_format(True)


def latents(kind: str) -> torch.Tensor:
    shape = (1, 16, 21, 90, 160) if kind == "wan2.1" else (1, 48, 31, 44, 80)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(DEV)


def timed(fn, repeat: int = 2):
    """(result of the last call, seconds of the last call, peak GiB over all calls)."""
    reset()
    out, dt = None, 0.0
    for _ in range(repeat):
        del out
        out = None
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
    return out, dt, gib()


def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = a.float() - b.float()
    return {"rel_l2": (d.norm() / b.float().norm()).item(), "max_abs": d.abs().max().item()}


def decode_cases(kind: str, tile: int, res: dict) -> None:
    """Wan2.1: fp32 and bf16, the second of two calls timed; Wan2.2: fp32, one call (the first)."""
    z = latents(kind)
    repeat = 2 if kind == "wan2.1" else 1
    for dtype in (torch.float32, torch.bfloat16) if kind == "wan2.1" else (torch.float32,):
        vae = make(kind, dtype)
        zz = z.to(dtype)
        whole, t0, m0 = timed(lambda: vae.decode(zz), repeat)
        whole = whole.cpu()
        res[f"{kind} {dtype} untiled"] = {"s": t0, "peak_gib": m0, "calls": repeat}
        vae.set_tiling(VAETiling.of_size(tile))
        tiled, t1, m1 = timed(lambda: vae.decode(zz), repeat)
        res[f"{kind} {dtype} tiled {tile}"] = {"s": t1, "peak_gib": m1, **diff(tiled.cpu(), whole)}
        print(kind, dtype, res[f"{kind} {dtype} untiled"], res[f"{kind} {dtype} tiled {tile}"], flush=True)
        vae = whole = tiled = None  # freed before the next precision


def frame_major(kind: str, tile: int, res: dict) -> None:
    """The other order: every tile's decoder stream advanced one latent frame at a time (outputs dropped)."""
    from lightx2v.models.wan.vae import latent_stats

    vae = make(kind, torch.float32).set_tiling(VAETiling.of_size(tile))
    z = latents(kind)
    grid = vae._tile_grid(z.shape[3], z.shape[4])

    class Bar:
        def update(self, n: int = 1) -> None:
            pass

    def run():
        mean, inv_std = latent_stats(vae.config.latents_mean, vae.config.latents_std, z)
        x = vae.conv2(z / inv_std + mean).contiguous(memory_format=torch.channels_last_3d)
        streams = [vae._decoded(x[..., r0:r1, c0:c1].contiguous(memory_format=torch.channels_last_3d),
                                CausalCache(), Bar()) for _, _, (r0, r1), (c0, c1) in grid]
        for _ in range(x.shape[2]):
            for s in streams:
                next(s)
        return None

    _, t, m = timed(run, repeat=1)
    res[f"{kind} fp32 frame-major {tile}"] = {"s": t, "peak_gib": m, "tiles": len(grid)}
    print("frame-major", res[f"{kind} fp32 frame-major {tile}"], flush=True)


def encode_case(tile: int, res: dict) -> None:
    vae = make("wan2.1", torch.float32)
    video = (torch.rand(1, 3, 81, 720, 1280, generator=torch.Generator().manual_seed(2)) * 2 - 1).to(DEV)
    whole, t0, m0 = timed(lambda: vae.encode(video), 1)
    vae.set_tiling(VAETiling.of_size(tile))
    tiled, t1, m1 = timed(lambda: vae.encode(video), 1)
    res["wan2.1 encode untiled"] = {"s": t0, "peak_gib": m0}
    res[f"wan2.1 encode tiled {tile}"] = {"s": t1, "peak_gib": m1, **diff(tiled, whole)}
    print("encode", res["wan2.1 encode untiled"], res[f"wan2.1 encode tiled {tile}"], flush=True)


def compile_case(tile: int, res: dict) -> None:
    from torch._dynamo.utils import counters

    from lightx2v.config import CompileConfig
    from lightx2v.runtime.vae_compile import compile_vae

    torch._dynamo.reset()
    counters.clear()
    vae = make("wan2.1", torch.bfloat16)
    z = latents("wan2.1").bfloat16()
    eager = vae.set_tiling(VAETiling.of_size(tile)).decode(z).cpu()
    compile_vae(vae, CompileConfig(enabled=True, vae=True))
    entry = {}
    for call in ("first", "second"):
        out, t, m = timed(lambda: vae.decode(z), repeat=1)
        entry[call] = {"s": t, "peak_gib": m, "unique_graphs": counters["stats"]["unique_graphs"]}
    entry.update(diff(out.cpu(), eager))
    res[f"wan2.1 bf16 tiled {tile} compiled"] = entry
    print("compile", entry, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--cases", default="decode21,frame_major,decode22,encode21")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tile": args.tile, "cases": {}}
    steps = {"decode21": lambda: decode_cases("wan2.1", args.tile, res["cases"]),
             "frame_major": lambda: frame_major("wan2.1", args.tile, res["cases"]),
             "decode22": lambda: decode_cases("wan2.2", args.tile, res["cases"]),
             "encode21": lambda: encode_case(args.tile, res["cases"]),
             "compile": lambda: compile_case(args.tile, res["cases"])}
    torch.backends.cudnn.benchmark = False
    for name in args.cases.split(","):
        try:
            with torch.no_grad():
                steps[name]()
        except Exception:  # noqa: BLE001 - record and go on
            res["cases"][f"{name} failed"] = traceback.format_exc(limit=3)
            print(res["cases"][f"{name} failed"], flush=True)
        (out / "vae_tiling.json").write_text(json.dumps(res, indent=2))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
