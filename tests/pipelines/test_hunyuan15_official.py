"""HunyuanVideo-1.5 from the official release folder (tencent/HunyuanVideo-1.5 layout, tiny random weights,
the real file and key names: tests/hunyuan15_official_fixtures.py): detected with no conversion, and the
same frames as the diffusers-layout folder holding the same tensors (T2V and I2V, the same latents);
then the variant choice, the variant's defaults, the glyph tokens and the refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import CheckpointError  # noqa: E402
from lightx2v.loading.detect import detect  # noqa: E402
from tests.hunyuan15_official_fixtures import write_pair  # noqa: E402

H = W = 64
F = 5
PROMPT = 'a neon sign reads "OPEN" above a red door'
KW = dict(negative_prompt="blurry", height=H, width=W, num_frames=F, num_inference_steps=2, output_type="np")


def _noise(seed=5):
    return torch.randn(1, 4, 2, H // 16, W // 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("hy15o"), "t2v")


def _load(path):
    return LightX2V.from_pretrained(path, device="cpu", dtype=torch.float32, progress=False)


def test_release_folder_matches_the_diffusers_folder(t2v):
    folder, root, variant = t2v
    official, diffusers_run = _load(root), _load(folder)
    mc = official.pipeline.model_config
    assert (mc.layout, mc.task, mc.files["variant"]) == ("official", "t2v", variant)
    z = _noise()
    want = diffusers_run.generate(PROMPT, latents=z, guidance_scale=6.0, **KW).frames
    got = official.generate(PROMPT, latents=z, **KW).frames  # guidance: the variant's (6)
    assert got.shape == want.shape == (F, H, W, 3)
    assert np.abs(got - want).max() < 1e-5
    # the glyph tokens are the reference's, added to google's ByT5 vocabulary (384)
    tok = official.pipeline.tokenizer_2
    assert len(tok) == 384 + 4 and tok.convert_tokens_to_ids("<zh-font-7>") == 387


def test_variant_defaults_are_the_references(t2v):
    mc = detect(t2v[1])
    d = mc.defaults
    assert (d.shift, d.guidance_scale, d.num_inference_steps, d.num_frames, d.fps) == (5.0, 6.0, 50, 121, 24)
    assert (d.height, d.width) == (480, 848)  # 480p: the 16:9 bucket of 640
    assert mc.arch.text_encoder.hidden_size == 32  # the text config of the whole Qwen2.5-VL config
    assert mc.arch.text_encoder_2.vocab_size == 388  # grown to the glyph checkpoint's rows


def test_several_variants_need_the_one_meant(t2v, tmp_path):
    root = tmp_path / "ckpts"
    shutil.copytree(t2v[1], root)
    shutil.copytree(root / "transformer" / "480p_t2v", root / "transformer" / "720p_t2v_distilled")
    shutil.copytree(root / "transformer" / "480p_t2v", root / "transformer" / "720p_sr_distilled")
    with pytest.raises(CheckpointError, match=r"holds 2 DiTs \(480p_t2v, 720p_t2v_distilled\); pass the one"):
        detect(root)
    mc = detect(root / "transformer" / "720p_t2v_distilled")
    assert mc.root == root and mc.files["variant"] == "720p_t2v_distilled"
    assert (mc.defaults.shift, mc.defaults.guidance_scale) == (9.0, 1.0)  # the reference's, CFG-distilled
    with pytest.raises(CheckpointError, match="super-resolution"):
        detect(root / "transformer" / "720p_sr_distilled")


def test_missing_glyph_weights_are_named(t2v, tmp_path):
    root = tmp_path / "ckpts"
    shutil.copytree(t2v[1], root)
    (root / "text_encoder" / "Glyph-SDXL-v2" / "checkpoints" / "byt5_model.pt").unlink()
    with pytest.raises(CheckpointError, match="Glyph-SDXL-v2 byT5 weights not found"):
        detect(root)


def test_another_scheduler_is_refused(t2v, tmp_path):
    root = tmp_path / "ckpts"
    shutil.copytree(t2v[1], root)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"solver": "heun"}))
    with pytest.raises(CheckpointError, match="solver = 'heun' is not supported"):
        detect(root)


def test_image_to_video_release_matches(tmp_path):
    folder, root, variant = write_pair(tmp_path, "i2v")
    official = _load(root / "transformer" / variant)
    assert official.pipeline.model_config.task == "i2v"
    assert "image_encoder" in official.pipeline.components
    image = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))
    z = _noise(7)
    want = _load(folder).generate(PROMPT, image=image, latents=z, guidance_scale=6.0, **KW).frames
    got = official.generate(PROMPT, image=image, latents=z, **KW).frames
    assert np.abs(got - want).max() < 1e-5


def test_a_sparse_attention_release_runs_ssta(t2v, tmp_path):
    """The *_distilled_sparse DiTs state attn_mode flex-block-attn (SSTA): under auto their double blocks
    run the "ssta" backend (no warning); a named backend forces dense attention, and says so."""
    root = tmp_path / "ckpts"
    shutil.copytree(t2v[1], root)
    cfg_file = root / "transformer" / "480p_t2v" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    param = {"tile_size": [1, 2, 2], "win_size": [[1, 1, 1]], "ssta_topk": 2}  # 8 tiles of the 2x4x4 latent grid
    cfg_file.write_text(json.dumps(cfg | {"attn_mode": "flex-block-attn", "attn_param": param}))
    import warnings as w

    with w.catch_warnings():
        w.simplefilter("error", UserWarning)
        sparse = _load(root)
    dit = sparse.pipeline.components["dit"]
    assert dit.sparse.topk == 2 and dit.sparse.tile == (1, 2, 2)
    assert {b.attn_backend.name for b in dit.double_blocks} == {"ssta"}
    assert dit.txt_in.individual_token_refiner.blocks[0].attn_backend.name == "torch_sdpa"  # auto's
    assert any("SSTA sparse attention (ssta" in line for line in sparse.pipeline.engine_log)
    dense = LightX2V.from_pretrained(root, device="cpu", dtype=torch.float32, progress=False, attention="torch_sdpa")
    assert {b.attn_backend.name for b in dense.pipeline.components["dit"].double_blocks} == {"torch_sdpa"}
    assert any("dense attention (torch_sdpa) as asked" in line for line in dense.pipeline.engine_log)
    z = _noise(3)
    kw = dict(KW, num_inference_steps=1)
    a, b = sparse.generate(PROMPT, latents=z, **kw).frames, dense.generate(PROMPT, latents=z, **kw).frames
    assert np.isfinite(a).all() and a.shape == b.shape == (F, H, W, 3)
    assert np.abs(a - b).max() > 1e-4  # each tile attends itself and its top-1 (2 // 2, <= 31 frames): sparse


@pytest.mark.parametrize("asked", ["auto", "ssta"])
def test_ssta_under_sequence_parallelism_is_dense_or_refused(asked):
    """SSTA's tiles span the whole grid and its backend would replace the sequence-parallel attention
    wrappers: under ulysses x ring > 1, auto runs dense (and says so), an explicit ssta is refused."""
    from types import SimpleNamespace

    from lightx2v.engine_config import EngineConfig, ParallelConfig
    from lightx2v.errors import InputError
    from lightx2v.pipelines.hunyuan15 import _sparse_attention

    marker = object()
    blocks = [SimpleNamespace(attn_backend=marker) for _ in range(2)]  # stands for the SP wrappers
    dit = SimpleNamespace(sparse=SimpleNamespace(tile=(1, 2, 2), window=(1, 1, 1), topk=2, sampling="topk", lam=0),
                          double_blocks=blocks)
    pipe = SimpleNamespace(components={"dit": dit}, engine_log=[])
    engine = EngineConfig(device="cpu", attention=asked, parallel=ParallelConfig(ulysses=2))
    if asked == "ssta":
        with pytest.raises(InputError, match="sequence parallelism"):
            _sparse_attention(pipe, engine)
    else:
        with pytest.warns(UserWarning, match="dense attention under sequence parallelism"):
            _sparse_attention(pipe, engine)
    assert all(b.attn_backend is marker for b in blocks)  # the wrappers stay
