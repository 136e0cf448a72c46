"""Shared pieces of the joint-attention ring / VAE parallel tests (test_parallel_joint_ring.py on 2 gloo
ranks, test_parallel_joint_ring4.py on 4): a generation on each rank, and its check against one process.

HunyuanVideo-1.5 (tests/hunyuan15_fixtures.py) and Qwen-Image (tests/qwen_image_fixtures.py), fp32, the
initial noise given, so one process and the ranks start alike. A case is (family, load options,
parallel options, request); `vae` cases ask for decoded pixels (output_type "np") with the VAE tiled so
that its tile grid is the parallel split (2 pieces of a latent frame 2 x (tile - overlap) wide), so the
parallel decode equals the one-process tiled decode."""

from __future__ import annotations

import torch

PROMPT, NEG = 'a sign reads "HI"', "blurry"
TOL = 1e-5

# HunyuanVideo-1.5: 16 px per latent pixel, patch 1: tokens = T' x h x w
HY_PADDED = dict(height=48, width=48, num_frames=9, num_inference_steps=2, guidance_scale=6.0)  # 27 tokens
HY_SMALL = dict(height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=6.0)
# 64 x 192 px: a 4 x 12 latent frame; tile 128 px (8 latent, overlap 2): tiles (0, 8), (6, 12) = the split
HY_VAE = dict(height=64, width=192, num_frames=5, num_inference_steps=2, guidance_scale=6.0)
# Qwen-Image: 8 px per latent pixel, 2 x 2 latent pixels per token
QW_PADDED = dict(height=48, width=80, num_inference_steps=3, guidance_scale=4.0)   # 3 x 5 tokens
# 64 x 192 px: an 8 x 24 latent frame; tile 128 px (16 latent, overlap 4): tiles (0, 16), (12, 24) = the split
QW_VAE = dict(height=64, width=192, num_inference_steps=2, guidance_scale=4.0)
VAE_TILE = {"vae_tiling": True, "vae_tile_size": 128}


def _noise(family: str, r: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if family == "hy15":
        from tests.hunyuan15_fixtures import LATENT

        return torch.randn(1, LATENT, (r["num_frames"] - 1) // 4 + 1, r["height"] // 16, r["width"] // 16, generator=g)
    return torch.randn(1, 4, 1, r["height"] // 8, r["width"] // 8, generator=g)


def request(family: str, r: dict, pixels: bool = False) -> dict:
    return dict(r, negative_prompt=NEG, latents=_noise(family, r), output_type="np" if pixels else "latent")


def generate(folder: str, load_kw: dict, req: dict) -> dict:
    from lightx2v import LightX2V

    pipe = LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, **load_kw)
    res = pipe.generate(PROMPT, **req)
    frames = None if res.frames is None else torch.as_tensor(res.frames)
    return {"latents": res.latents, "frames": frames, "stats": dict(res.stats), "log": list(pipe.pipeline.engine_log)}


def describe(par_kw: dict) -> str:
    parts = [f"{k} {par_kw[k]}" for k in ("ulysses", "ring") if par_kw.get(k, 1) > 1]
    if par_kw.get("cfg_parallel"):
        parts.insert(0, "cfg 2")
    return ", ".join(parts + (["vae_parallel"] if par_kw.get("vae_parallel") else []))


def check(name: str, got: list, want: dict, par_kw: dict, tol: float) -> None:
    """Each rank's latents within `tol` of one process's (and rank 0's pixels, when decoded; the other
    ranks return none), the parallel log line of each rank, the attentions wrapped."""
    n = len(got)
    for r, g in enumerate(got):
        err = float((g["latents"] - want["latents"]).abs().max())
        assert err <= tol, f"{name}: rank {r} latents differ from one process by {err:.2e}"
    assert want["latents"].abs().max() > 0.1
    if want["frames"] is not None:
        assert got[0]["frames"].shape == want["frames"].shape and all(g["frames"] is None for g in got[1:])
        err = float((got[0]["frames"] - want["frames"]).abs().max())
        assert err <= tol, f"{name}: rank 0 pixels differ from one process by {err:.2e}"
        assert float(want["frames"].std()) > 1e-3  # not a flat image
    assert [next(x for x in g["log"] if x.startswith("parallel: rank")) for g in got] == [
        f"parallel: rank {r} of {n} on cpu: {describe(par_kw)}" for r in range(n)]
    sp = par_kw.get("ulysses", 1) * par_kw.get("ring", 1)
    if sp > 1:
        assert any(f"tokens split over {sp} ranks" in x and "2 self-attentions wrapped" in x for x in got[0]["log"])
