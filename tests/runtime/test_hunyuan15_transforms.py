"""Every engine option on HunyuanVideo-1.5 (t2v), on the tiny folder (tests/hunyuan15_fixtures.py), against
the plain run on the same latents (one module-scoped reference): the placements (model, block and phase offload,
their lazy loads, encoder offload, the text encoder on the CPU: bit-identical), per-role attention (close), VAE
tiling and a bf16 VAE (close to the plain decode, itself tiled by default as the reference), the documented
no-ops (fuse_qkv, context_kv: each says why in the engine log, and changes nothing; kernels 'auto' on the CPU is
the torch reference) and the refusal before loading (a tiny VAE: Wan2.1's). kernels 'triton':
tests/runtime/test_hunyuan15_kernels.py. Quantization, compile,
batched CFG, the caches, memory: tests/runtime/test_engine_hunyuan15.py, test_hunyuan15_cache.py, _memory.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402
from tests.hunyuan15_fixtures import LATENT, write_hunyuan15  # noqa: E402

H = W = 32
F = 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_hunyuan15(tmp_path_factory.mktemp("hy15t"))[0]


def _load(folder, **kw):
    return LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, **kw)


def _run(pipe, output_type="latent", h=H, w=W):
    z = torch.randn(1, LATENT, 2, h // 16, w // 16, generator=torch.Generator().manual_seed(3))
    res = pipe.generate('a sign reads "HI"', negative_prompt="blurry", height=h, width=w, num_frames=F,
                        num_inference_steps=2, guidance_scale=6.0, latents=z, output_type=output_type)
    return res.latents if output_type == "latent" else res.frames


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _log(pipe, step):
    return [line for line in pipe.pipeline.engine_log if line.startswith(step)]


@pytest.fixture(scope="module")
def plain_pipe(folder):
    return _load(folder)


@pytest.fixture(scope="module")
def plain(plain_pipe):
    return _run(plain_pipe)


@pytest.mark.parametrize("kw", [dict(offload="model", text_encoder_device="cpu", context_kv=False),
                                dict(offload="phase"), dict(offload="phase", lazy_load=True, offload_encoders=True),
                                dict(offload="block", lazy_load=True)],
                         ids=["model_te_cpu", "phase", "lazy_phase_encoders", "lazy_block"])
def test_placements_give_the_same_latents(folder, plain, kw):
    pipe = _load(folder, **kw)
    assert f"offload ({kw['offload']}" in _log(pipe, "placement")[0]
    assert torch.equal(_run(pipe), plain)


def test_phase_offload_runs_two_phases_per_block(folder):
    from lightx2v.runtime.block_offload import block_units

    pipe = _load(folder, offload="phase")
    units = block_units(pipe.pipeline.dit.double_blocks[0], "phase")
    assert [name for name, _ in units] == ["attn", "mlp"] and all(tensors for _, tensors in units)


def test_per_role_attention_stays_close(folder, plain):
    assert _rel(_run(_load(folder, attention="self=reference,cross=torch_sdpa")), plain) < 1e-5


def test_the_no_ops_say_why_and_change_nothing(folder, plain):
    pipe = _load(folder, fuse_qkv=True, kernels="auto")
    assert "nothing to fuse" in _log(pipe, "fuse_qkv")[0]
    assert _log(pipe, "kernels") == ["kernels: dit: torch"]  # auto: triton only where it compiles (CUDA)
    assert "no-op, HunyuanVideo15DiT has no cross-attention" in _log(pipe, "context_kv")[0]
    assert torch.equal(_run(pipe), plain)


def test_vae_tiling_and_bf16_vae_stay_close(folder, plain_pipe):
    """The plain decode is tiled too (256 px, the reference's default): 192 px frames decode whole there and in
    128 px tiles (32 px overlap) here."""
    whole = _run(plain_pipe, "pt", 192, 192)
    tiled = _load(folder, vae_tiling=True, vae_tile_size=128)
    assert "tile 128 px" in _log(tiled, "vae")[0]
    assert 0 < _rel(_run(tiled, "pt", 192, 192), whole) < 0.05
    assert 0 < _rel(_run(_load(folder, vae_dtype="bf16"), "pt", 192, 192), whole) < 0.05


@pytest.mark.parametrize("kw, match", [
    # a tiny VAE is checked before any weight is read (this folder's VAE has 4 latent channels, the released
    # tiny VAEs take 32; tests/pipelines/test_tiny_vae_families.py runs them)
    (dict(tiny_vae="TINY"), "this HunyuanVideo-1.5 model's VAE has 4 latent channels"),  # a CheckpointError
])
def test_refused_before_loading_in_one_line(folder, tmp_path, monkeypatch, kw, match):
    import lightx2v.loading.components as components
    from lightx2v.errors import CheckpointError, LightX2VError

    if kw.get("tiny_vae"):
        (tmp_path / "taew2_1.pth").write_bytes(b"")
        kw = dict(tiny_vae=tmp_path / "taew2_1.pth")
    monkeypatch.setattr(components, "load_component", lambda *a, **k: pytest.fail("a weight was read"))
    with pytest.raises(LightX2VError, match=match) as err:
        _load(folder, **kw)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, CheckpointError if "tiny_vae" in kw else InputError)


def test_chunk_tokens_runs_the_image_stream_in_chunks_with_the_same_latents(folder, plain, monkeypatch):
    """Through the engine (the log), then 3 tokens a chunk (below the engine's minimum of 256: the tiny image
    stream has 8 tokens) so that the chunked path runs, with a last partial chunk."""
    from lightx2v.models.hunyuan15.dit_blocks import MMDoubleStreamBlock
    from lightx2v.runtime.chunking import apply_chunking

    pipe = _load(folder, chunk_tokens=256)
    assert _log(pipe, "chunking") == ["chunking: dit, 2 blocks run 256 tokens at a time"]
    assert apply_chunking(pipe.pipeline.dit, 3) == 2
    calls = []
    chunked = MMDoubleStreamBlock._img_chunked
    monkeypatch.setattr(MMDoubleStreamBlock, "_img_chunked", lambda self, *a: calls.append(1) or chunked(self, *a))
    torch.testing.assert_close(_run(pipe), plain, rtol=1e-4, atol=1e-5)  # GEMMs over fewer rows: last bits
    assert len(calls) == 2 * 2 * 2 * 2  # (q/k/v, residuals) x blocks x CFG branches x steps
