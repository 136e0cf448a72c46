"""Peak activation memory of the Wan2.1 DiT and VAE decode on a CUDA GPU (runtime/memory.py's numbers).

    python benchmarks/memory_peaks.py                 # the table behind models/wan/spec.py `memory`
    python benchmarks/memory_peaks.py --cap 10 dit14  # does a 720p 14B-wide step run under 10 GiB?

Models are the real widths with 2 DiT blocks (blocks run one after another, so the peak is one
block's) and random weights; peaks are torch.cuda.max_memory_allocated above what was allocated
before the call. Compare each with `lightx2v.runtime.memory.estimate(...)` / LOWER_BOUND.
"""

from __future__ import annotations

import argparse

import torch

from lightx2v.models.wan.dit import WanDiTConfig, WanModel
from lightx2v.models.wan.vae import WanVAE, WanVAEConfig
from lightx2v.ops.attention import get_backend, set_attention_backend

DEV = torch.device("cuda", 0)
DITS = {"dit13": (1536, 8960, 12), "dit14": (5120, 13824, 40)}
SIZES = {"480p": (60, 104), "720p": (90, 160)}  # latent h, w


def build(cls, cfg, dtype):
    with torch.device("meta"):
        m = cls(cfg)
    m = m.to_empty(device=DEV)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.02)
    return m.to(dtype).eval().requires_grad_(False)


def peak(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def dit_run(name: str, dtype: torch.dtype, size: str, backend: str = "torch_sdpa"):
    dim, ffn, heads = DITS[name]
    m = build(WanModel, WanDiTConfig(model_type="t2v", in_dim=16, dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=2), dtype)
    set_attention_backend(m, get_backend(backend))
    x = torch.randn(1, 16, 21, *SIZES[size], device=DEV, dtype=dtype)
    ctx, t = torch.randn(1, 512, 4096, device=DEV, dtype=dtype), torch.tensor([500.0], device=DEV)
    return (lambda: m(x, t, ctx)), x[0, 0].numel() // 4


def vae_run(size: str, latent_frames: int):
    vae = build(WanVAE, WanVAEConfig(), torch.float32)
    z = torch.randn(1, 16, latent_frames, *SIZES[size], device=DEV)
    return lambda: vae.decode(z)


def table() -> None:
    for name in DITS:
        for dtype in (torch.bfloat16, torch.float32):
            for size in SIZES:
                fn, tokens = dit_run(name, dtype, size)
                print(f"{name} {dtype} {size}: {peak(fn) / tokens / 1e3:.1f} KB a token")
    for size in SIZES:
        for frames in (2, 6):
            pixels = SIZES[size][0] * SIZES[size][1] * 64
            print(f"VAE decode {size} {frames} latent frames: {peak(vae_run(size, frames)) / pixels / 1e3:.1f} KB a pixel")


def capped(gib: float, what: str) -> None:
    fn = vae_run("720p", 6) if what == "vae" else dit_run(what, torch.bfloat16, "720p")[0]
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.set_per_process_memory_fraction((base + gib * 2**30) / torch.cuda.get_device_properties(DEV).total_memory, DEV)
    try:
        print(what, gib, "GiB:", f"ran, peak {peak(fn) / 2**30:.2f} GiB")
    except torch.cuda.OutOfMemoryError:
        print(what, gib, "GiB: out of memory")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", type=float, default=None, help="GiB above what is allocated before the call")
    ap.add_argument("what", nargs="?", default="vae", choices=("vae", *DITS))
    args = ap.parse_args()
    table() if args.cap is None else capped(args.cap, args.what)
