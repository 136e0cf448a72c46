"""Ulysses 2 x ring 2 for the joint-attention families, on 4 gloo ranks (one RankPool for the module):
HunyuanVideo-1.5 T2V and Qwen-Image T2I on token counts the ranks pad (27, 15 tokens over 4 ranks), each
rank's latents against one process within 1e-5 (fp32). Each Ulysses group all-to-alls its image tokens
and slices the text by heads; the ring passes each group's image K/V round the ring; the text's output
is all-gathered over the heads and is the same on every rank (test_parallel_joint_ring.py checks the
ring's part of that bit for bit)."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")

from tests.runtime import joint_parallel_cases as jc  # noqa: E402
from tests.runtime.parallel_harness import RankPool  # noqa: E402

CASES = {  # name: (family, load options, parallel options, request)
    "hy15_ulysses_ring_padded": ("hy15", {}, {"ulysses": 2, "ring": 2}, jc.HY_PADDED),
    "qwen_ulysses_ring_padded": ("qwen", {}, {"ulysses": 2, "ring": 2}, jc.QW_PADDED),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, qwen_image_t2i):
    from tests.hunyuan15_fixtures import write_hunyuan15

    root = tmp_path_factory.mktemp("par-joint-ring4")
    return {"hy15": str(write_hunyuan15(root / "t2v")[0]), "qwen": str(qwen_image_t2i[0])}


@pytest.fixture(scope="module")
def ranks(folders):
    with RankPool(4, timeout=240) as pool:
        yield pool


@pytest.mark.parametrize("name", CASES)
def test_four_ranks_equal_one(folders, ranks, name):
    family, load_kw, par_kw, req = CASES[name]
    req = jc.request(family, req)
    want = jc.generate(folders[family], load_kw, req)
    got = ranks.run(jc.generate, folders[family], {**load_kw, **par_kw}, req)
    jc.check(name, got, want, par_kw, jc.TOL * max(1.0, float(want["latents"].abs().max())))
