"""Qwen-Image on two gloo ranks (lightx2v.runtime.parallel; one RankPool for the module): CFG parallel
(the norm-rescaled CFG computed on the combined result, as one process does; the prompt and the
negative prompt have different token counts) and Ulysses 2 equal the one-process run within 1e-5
(fp32, the tiny folders of tests/qwen_image_fixtures.py and tests/qwen_image_edit_fixtures.py):
Ulysses on a token count the ranks pad (15), CFG parallel with TaylorSeer, Ulysses with w8a8-int8,
Edit-2511's condition tokens under Ulysses (`split`, where they start, relative to each rank's share;
zero_cond_t modulates them with timestep 0's embedding); only rank 0 writes the PNG; what cannot run
(a degree the heads refuse, Qwen-Image-2.1) is one line before any weight is read (ring and vae_parallel
run: test_parallel_joint_ring.py).
The tolerance is 1e-5 of the output's largest value (the edit latents reach ~16)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.config import ParallelConfig  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402
from tests.runtime.parallel_harness import RankPool, assert_ranks_match_one_process  # noqa: E402

PROMPT, NEG = "a red cat sitting on a green mat", "blurry"
TOL = 1e-5


def _noise(h: int, w: int) -> torch.Tensor:
    return torch.randn(1, 4, 1, h // 8, w // 8, generator=torch.Generator().manual_seed(9))


SMALL = dict(height=64, width=96, num_inference_steps=3, guidance_scale=4.0)   # 4 x 6 tokens
PADDED = dict(SMALL, height=48, width=80)                                        # 3 x 5 tokens: one padded
CASES = {  # name: (folder, load options, parallel options, request)
    "cfg": ("t2i", {}, {"cfg_parallel": True}, SMALL),
    "ulysses_padded": ("t2i", {}, {"ulysses": 2}, PADDED),
    "cfg_taylorseer": ("t2i", {"cache": "taylorseer:interval=2,warmup=1"}, {"cfg_parallel": True},
                       dict(SMALL, num_inference_steps=5)),
    "ulysses_quant": ("t2i", {"quant": "w8a8-int8"}, {"ulysses": 2}, SMALL),
    "edit_plus_ulysses": ("edit-plus", {}, {"ulysses": 2}, PADDED),
}


def _image():
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 72, 3), dtype=np.uint8))


def _request(kind: str, request: dict) -> dict:
    r = dict(request, negative_prompt=NEG, latents=_noise(request["height"], request["width"]), output_type="latent")
    if kind != "t2i":
        r["image"] = _image()
    return r


def _generate(folder: str, load_kw: dict, request: dict) -> dict:
    from lightx2v.pipelines import qwen_image_edit
    from tests.small_edit_areas import small_variants

    qwen_image_edit.VARIANTS.update(small_variants())  # the edit models' image areas made small (tests only)
    pipe = LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, **load_kw)
    res = pipe.generate(PROMPT, **request)
    return {"latents": res.latents, "path": res.path, "seed": res.seed, "stats": dict(res.stats),
            "log": list(pipe.pipeline.engine_log)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, qwen_image_t2i):
    from tests.qwen_image_edit_fixtures import write_qwen_image_edit

    root = tmp_path_factory.mktemp("par-qwen")
    return {"t2i": str(qwen_image_t2i[0]), "edit-plus": str(write_qwen_image_edit(root, plus=True))}


@pytest.fixture(scope="module")
def ranks(folders):
    from lightx2v.pipelines import qwen_image_edit

    saved = dict(qwen_image_edit.VARIANTS)
    with RankPool(2, timeout=240) as pool:
        yield pool
    qwen_image_edit.VARIANTS.update(saved)  # (_generate made them small in this process too)


@pytest.mark.parametrize("name", CASES)
def test_two_ranks_equal_one(folders, ranks, name):
    kind, load_kw, par_kw, request = CASES[name]
    request = _request(kind, request)
    want = _generate(folders[kind], load_kw, request)
    got = ranks.run(_generate, folders[kind], {**load_kw, **par_kw}, request)
    # 1e-5 of the output's scale: the edit model's latents reach ~16 here (its fp32 ulp there is 2e-6, and
    # Ulysses attends half the heads per call: the ranks differ by ~9 ulps, 8e-7 relative; a wrong `split`
    # makes it 0.7)
    tol = TOL * max(1.0, float(want["latents"].abs().max()))
    assert_ranks_match_one_process(name, got, want, par_kw, load_kw, tol)


def test_only_rank_0_writes_the_png_and_the_seed_is_rank_0s(folders, ranks, tmp_path):
    path = tmp_path / "out.png"
    request = dict(SMALL, negative_prompt=NEG, output_path=str(path))  # no seed: each process draws one
    got = ranks.run(_generate, folders["t2i"], {"cfg_parallel": True}, request)
    assert got[0]["path"] == str(path) and path.exists() and got[1]["path"] is None
    assert got[0]["seed"] == got[1]["seed"] and torch.equal(got[0]["latents"], got[1]["latents"])
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".png"] == ["out.png"]


def test_impossible_degrees_are_one_line_before_loading(folders, monkeypatch):
    from lightx2v.loading.detect import detect
    from lightx2v.runtime.parallel import check_parallel

    mc = detect(folders["t2i"])  # 2 heads (the release: 24); configs only
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(InputError, match=r"^ulysses 4 does not divide the model's 2 attention heads; possible: 1, 2$"):
        check_parallel(mc, ParallelConfig(ulysses=4))
    check_parallel(mc, ParallelConfig(ulysses=2, ring=2))  # ring: joint attention round the ring
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_parallel(mc, ParallelConfig(cfg_parallel=True, vae_parallel=True))  # the Wan VAE's raw decoder, split
    check_parallel(mc, ParallelConfig(ring=2))
    check_parallel(mc, ParallelConfig(cfg_parallel=True))  # fine
    check_parallel(detect(folders["edit-plus"]), ParallelConfig(ulysses=2))  # the edit models too


def test_qwen_image_21_is_refused_by_name(monkeypatch):
    from types import SimpleNamespace

    from lightx2v.pipelines.qwen_image21 import QwenImage21Pipeline
    from lightx2v.runtime.parallel import check_parallel

    class Tasks:  # the family's dispatcher, as QwenImageTasks: the model's own class decides
        @staticmethod
        def for_model(mc):
            return QwenImage21Pipeline

    spec = SimpleNamespace(title="Qwen-Image", pipeline=lambda: Tasks)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match=r"^Qwen-Image-2.1 pipelines do not run on several GPUs yet"):
        check_parallel(SimpleNamespace(spec=spec, dit=SimpleNamespace(num_heads=16)), ParallelConfig(cfg_parallel=True))
