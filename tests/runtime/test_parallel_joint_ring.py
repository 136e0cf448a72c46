"""Ring attention and the parallel VAE decode for the joint-attention families, on 2 gloo ranks (one
RankPool for the module): `ring_joint_attention` against float64 attention over [image, text] (padded
image tokens, fewer text keys than text queries; the text's output the same bits on both ranks); the
HunyuanVideo-1.5 VAE's parallel decode against its tiled decode on the same grid; HunyuanVideo-1.5 T2V
and Qwen-Image T2I with ring 2 (a token count the ranks pad: 27, 15; HunyuanVideo-1.5 with batched CFG,
whose two branches have unequal text lengths), Qwen-Image-Edit-2511 with ring 2 (the condition tokens'
`split` per rank) and with ring 2 + vae_parallel (the decoded pixels), each against one process within
1e-5 (fp32; Qwen: of the output's largest value). Ulysses 2 x ring 2 (4 ranks): test_parallel_joint_ring4.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from tests.runtime import joint_parallel_cases as jc  # noqa: E402
from tests.runtime.parallel_harness import RankPool  # noqa: E402

CASES = {  # name: (family, load options, parallel options, request, decode to pixels)
    "hy15_ring_padded": ("hy15", {}, {"ring": 2}, jc.HY_PADDED, False),
    "hy15_ring_batched_cfg": ("hy15", {"cfg_mode": "batched"}, {"ring": 2}, jc.HY_SMALL, False),
    "hy15_ring_vae": ("hy15", jc.VAE_TILE, {"ring": 2, "vae_parallel": True}, jc.HY_VAE, True),
    "qwen_ring_padded": ("qwen", {}, {"ring": 2}, jc.QW_PADDED, False),
    "qwen_ring_vae": ("qwen", jc.VAE_TILE, {"ring": 2, "vae_parallel": True}, jc.QW_VAE, True),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, qwen_image_t2i):
    from tests.hunyuan15_fixtures import write_hunyuan15
    from tests.qwen_image_edit_fixtures import write_qwen_image_edit

    root = tmp_path_factory.mktemp("par-joint-ring")
    return {"hy15": str(write_hunyuan15(root / "t2v")[0]), "qwen": str(qwen_image_t2i[0]),
            "edit-plus": str(write_qwen_image_edit(root / "edit", plus=True))}


@pytest.fixture(scope="module")
def ranks(folders):
    with RankPool(2, timeout=240) as pool:
        yield pool


# ---------------------------------------------------------------- the attention alone


def _joint_inputs(seed: int = 0):
    # the whole problem: 7 real image tokens (padded to 8: 4 per rank), 5 text queries, 3 valid text keys
    g = torch.Generator().manual_seed(seed)
    img = [torch.randn(2, 8, 2, 16, generator=g) for _ in range(3)]
    txt = [torch.randn(2, 5, 2, 16, generator=g) for _ in range(3)]
    return img, [txt[0], txt[1][:, :3], txt[2][:, :3]]


def _ring_joint_on_rank():
    import torch.distributed as dist

    from lightx2v.runtime.parallel.ring import ring_joint_attention

    (q, k, v), (qt, kt, vt) = _joint_inputs()
    r = dist.get_rank()
    mine = [t[:, 4 * r:4 * (r + 1)] for t in (q, k, v)]
    return ring_joint_attention(*mine, qt, kt, vt, None, valid=7)


def test_ring_joint_attention_is_attention_over_image_and_text(ranks):
    (q, k, v), (qt, kt, vt) = _joint_inputs()
    keys, values = torch.cat([k[:, :7], kt], 1).double(), torch.cat([v[:, :7], vt], 1).double()
    queries = torch.cat([q[:, :7], qt], 1).double()
    s = torch.einsum("bqhd,bkhd->bhqk", queries, keys) / 16 ** 0.5
    want = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), values)  # [B, 7 + 5, H, D]
    got = ranks.run(_ring_joint_on_rank)
    image = torch.cat([got[0][0], got[1][0]], 1)[:, :7]  # the padded query row is the caller's to drop
    torch.testing.assert_close(image.double(), want[:, :7], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[0][1].double(), want[:, 7:], rtol=0, atol=1e-5)
    assert torch.equal(got[0][1], got[1][1])  # the text stream: the same bits on both ranks


# ---------------------------------------------------------------- HunyuanVideo-1.5's VAE, split


def _hy_vae():
    from lightx2v.models.hunyuan15.vae import HunyuanVideo15VAE
    from lightx2v.models.hunyuan15.vae_config import tiny_vae_config
    from lightx2v.models.wan.tiny import randomize_

    return randomize_(HunyuanVideo15VAE(tiny_vae_config()), seed=0).eval()


def _hy_vae_on_rank(z: torch.Tensor):
    from lightx2v.models.wan.vae_tiling import VAETiling
    from lightx2v.runtime.parallel.vae import decode_vae_parallel

    return decode_vae_parallel(_hy_vae().set_tiling(VAETiling(128, 32)), z, None)  # the overlap: the tiling's


def test_hunyuan15_vae_split_over_two_ranks_is_its_tiled_decode(ranks):
    from lightx2v.models.wan.vae_tiling import VAETiling

    z = torch.randn(1, 32, 2, 3, 12, generator=torch.Generator().manual_seed(1))  # 48 x 192 px, 5 frames
    want = _hy_vae().set_tiling(VAETiling(128, 32)).decode(z)  # tiles (0, 8), (6, 12): the split's pieces
    whole = _hy_vae().decode(z)
    got = ranks.run(_hy_vae_on_rank, z)
    assert got[1] is None and got[0].shape == want.shape == (1, 3, 5, 48, 192)
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-5)
    assert float((got[0] - whole).abs().max()) > 1e-4  # a split decode: not the whole one (the test can tell)


# ---------------------------------------------------------------- whole generations


def _generate_small_edit(folder: str, load_kw: dict, req: dict) -> dict:
    from lightx2v.pipelines import qwen_image_edit
    from tests.small_edit_areas import small_variants

    qwen_image_edit.VARIANTS.update(small_variants())  # the edit models' image areas made small (tests only)
    return jc.generate(folder, load_kw, req)


def test_edit_2511_under_ring_equals_one(folders, ranks, monkeypatch):
    """The condition images' tokens follow the noisy image's in the ring's sequence; `split` (where they
    start, modulated by timestep 0) is made relative to each rank's share, as under Ulysses."""
    import numpy as np
    from PIL import Image

    from lightx2v.pipelines import qwen_image_edit
    from tests.small_edit_areas import small_variants

    for k, v in small_variants().items():
        monkeypatch.setitem(qwen_image_edit.VARIANTS, k, v)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 72, 3), dtype=np.uint8))
    req = dict(jc.request("qwen", jc.QW_PADDED), image=image)
    want = jc.generate(folders["edit-plus"], {}, req)
    got = ranks.run(_generate_small_edit, folders["edit-plus"], {"ring": 2}, req)
    jc.check("edit_plus_ring", got, want, {"ring": 2}, jc.TOL * max(1.0, float(want["latents"].abs().max())))


@pytest.mark.parametrize("name", CASES)
def test_two_ranks_equal_one(folders, ranks, name):
    family, load_kw, par_kw, req, pixels = CASES[name]
    req = jc.request(family, req, pixels)
    want = jc.generate(folders[family], load_kw, req)
    got = ranks.run(jc.generate, folders[family], {**load_kw, **par_kw}, req)
    jc.check(name, got, want, par_kw, jc.TOL * max(1.0, float(want["latents"].abs().max())))
