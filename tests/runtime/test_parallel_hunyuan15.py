"""HunyuanVideo-1.5 on two gloo ranks (lightx2v.runtime.parallel; one RankPool for the module): CFG parallel
and Ulysses 2 equal the one-process run within 1e-5 (fp32, the tiny T2V / I2V folders of
tests/hunyuan15_fixtures.py), Ulysses on a token count the ranks pad (27), with batched CFG (the two
branches' conditioning lengths differ: the joint attention per sample), on I2V (the SigLIP tokens join
the replicated stream), CFG parallel with TaylorSeer, Ulysses with w8a8-int8; only rank 0 writes the
mp4; what cannot run is one line before any weight is read (ring and vae_parallel run:
test_parallel_joint_ring.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.config import ParallelConfig  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402
from tests.hunyuan15_fixtures import LATENT  # noqa: E402
from tests.runtime.parallel_harness import RankPool, assert_ranks_match_one_process  # noqa: E402

PROMPT, NEG = 'a sign reads "HI"', "blurry"
TOL = 1e-5


def _noise(f: int, h: int, w: int) -> torch.Tensor:
    return torch.randn(1, LATENT, (f - 1) // 4 + 1, h // 16, w // 16, generator=torch.Generator().manual_seed(3))


SMALL = dict(height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=6.0)
PADDED = dict(height=48, width=48, num_frames=9, num_inference_steps=2, guidance_scale=6.0)  # 3 x 3 x 3 tokens
CASES = {  # name: (folder, load options, parallel options, request)
    "cfg": ("t2v", {}, {"cfg_parallel": True}, SMALL),
    "ulysses_padded": ("t2v", {}, {"ulysses": 2}, PADDED),
    "ulysses_batched_cfg": ("t2v", {"cfg_mode": "batched"}, {"ulysses": 2}, SMALL),
    "cfg_taylorseer": ("t2v", {"cache": "taylorseer:interval=2,warmup=1"}, {"cfg_parallel": True},
                       dict(SMALL, num_inference_steps=5)),
    "ulysses_quant": ("t2v", {"quant": "w8a8-int8"}, {"ulysses": 2}, SMALL),
    # firstblock under Ulysses: the decision (block 0's residual) is made on every rank alike, and the
    # carried text stream is whole on every rank
    "ulysses_firstblock": ("t2v", {"cache": "firstblock:threshold=1e9"}, {"ulysses": 2}, dict(SMALL, num_inference_steps=4)),
    "i2v_ulysses": ("i2v", {}, {"ulysses": 2}, dict(SMALL, height=48, width=48)),
}


def _image():
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8))


def _request(folder_kind: str, request: dict) -> dict:
    r = dict(request, negative_prompt=NEG, latents=_noise(request["num_frames"], request["height"], request["width"]),
             output_type="latent")
    if folder_kind == "i2v":
        r["image"] = _image()
    return r


def _generate(folder: str, load_kw: dict, request: dict) -> dict:
    pipe = LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, **load_kw)
    res = pipe.generate(PROMPT, **request)
    return {"latents": res.latents, "path": res.path, "seed": res.seed, "stats": dict(res.stats),
            "log": list(pipe.pipeline.engine_log)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tests.hunyuan15_fixtures import write_hunyuan15, write_hunyuan15_i2v

    root = tmp_path_factory.mktemp("par-hy15")
    return {"t2v": str(write_hunyuan15(root / "t2v")[0]), "i2v": str(write_hunyuan15_i2v(root / "i2v")[0])}


@pytest.fixture(scope="module")
def ranks(folders):
    with RankPool(2, timeout=240) as pool:
        yield pool


@pytest.mark.parametrize("name", CASES)
def test_two_ranks_equal_one(folders, ranks, name):
    kind, load_kw, par_kw, request = CASES[name]
    request = _request(kind, request)
    want = _generate(folders[kind], load_kw, request)
    got = ranks.run(_generate, folders[kind], {**load_kw, **par_kw}, request)
    assert_ranks_match_one_process(name, got, want, par_kw, load_kw, TOL)


def test_only_rank_0_writes_and_the_seed_is_rank_0s(folders, ranks, tmp_path):
    path = tmp_path / "out.mp4"
    request = dict(SMALL, negative_prompt=NEG, output_path=str(path))  # no seed: each process draws one
    got = ranks.run(_generate, folders["t2v"], {"cfg_parallel": True}, request)
    assert got[0]["path"] == str(path) and path.exists() and got[1]["path"] is None
    assert got[0]["seed"] == got[1]["seed"] and torch.equal(got[0]["latents"], got[1]["latents"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".mp4") == ["out.mp4"]


def test_impossible_degrees_are_one_line_before_loading(folders, monkeypatch):
    from lightx2v.loading.detect import detect
    from lightx2v.runtime.parallel import check_parallel

    mc = detect(folders["t2v"])  # 2 heads (the release: 16); configs only
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(InputError, match=r"^ulysses 4 does not divide the model's 2 attention heads; possible: 1, 2$"):
        check_parallel(mc, ParallelConfig(ulysses=4))
    check_parallel(mc, ParallelConfig(cfg_parallel=True, ring=2))  # ring: joint attention round the ring
    check_parallel(mc, ParallelConfig(ulysses=2, ring=2))
    with pytest.raises(InputError, match=r"^parallel degrees cfg 1 x ulysses 1 x ring 2 = 2, but the launch has 4"):
        check_parallel(mc, ParallelConfig(ring=2))
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_parallel(mc, ParallelConfig(ulysses=2, vae_parallel=True))  # the VAE's raw decoder, split
    check_parallel(mc, ParallelConfig(ulysses=2))  # fine
