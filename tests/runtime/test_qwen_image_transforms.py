"""Every engine option on Qwen-Image (t2i), on the tiny folder (tests/qwen_image_fixtures.py), against the
plain run on the same latents (one module-scoped reference): the placements (model offload, encoder offload,
the text encoder on the CPU: bit-identical; block / phase offload and their lazy loads: to fp32 rounding, as
tests/runtime/test_qwen_image_engine.py explains), batched CFG, per-role attention, the Triton kernels in the
interpreter and a bf16 VAE (close), VAE tiling (close to the whole decode), the documented no-ops (fuse_qkv,
chunk_tokens, context_kv: each says why in the engine log, and changes nothing) and the refusal of a tiny VAE.
Quantization, compile, the caches and the memory planner: tests/runtime/test_qwen_image_engine.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402

H, W = 64, 96


def _load(folder, **kw):
    return LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, **kw)


def _run(pipe, h=H, w=W, output_type="latent", steps=2, guidance=4.0):
    z = torch.randn(1, 4, 1, h // 8, w // 8, generator=torch.Generator().manual_seed(9))
    res = pipe.generate("a red cat", negative_prompt="blurry", guidance_scale=guidance, height=h, width=w,
                        num_inference_steps=steps, latents=z, output_type=output_type)
    return res.latents if output_type == "latent" else res.images


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def folder(qwen_image_t2i):
    return qwen_image_t2i[0]


@pytest.fixture(scope="module")
def plain_pipe(folder):
    return _load(folder)


@pytest.fixture(scope="module")
def plain(plain_pipe):
    return _run(plain_pipe)


def _log(pipe, step):
    return [line for line in pipe.pipeline.engine_log if line.startswith(step)]


@pytest.mark.parametrize("kw", [dict(offload="model", text_encoder_device="cpu", context_kv=False),
                                dict(offload_encoders=True)], ids=["model_te_cpu_no_context_kv", "encoders"])
def test_exact_transforms_give_the_same_latents(folder, plain, kw):
    assert torch.equal(_run(_load(folder, **kw)), plain)


@pytest.mark.parametrize("kw", [dict(offload="phase"), dict(offload="block", lazy_load=True),
                                dict(offload="phase", lazy_load=True)], ids=["phase", "lazy_block", "lazy_phase"])
def test_block_and_phase_offload_match_the_resident_run(folder, plain, kw):
    pipe = _load(folder, **kw)
    assert f"offload ({kw['offload']}" in _log(pipe, "placement")[0]
    torch.testing.assert_close(_run(pipe), plain, rtol=1e-4, atol=5e-5)  # fp32 rounding (see the docstring)


def test_batched_cfg_and_per_role_attention_stay_close(folder, plain):
    assert _rel(_run(_load(folder, cfg_mode="batched", attention="self=reference,cross=torch_sdpa")), plain) < 1e-5


def test_triton_kernels_stay_close(folder, plain_pipe):
    """In Triton's interpreter (tests/conftest.py): one branch (guidance 1), the interpreter being slow."""
    pipe = _load(folder, kernels="triton")
    assert _log(pipe, "kernels") == ["kernels: dit: triton"]
    assert 0 < _rel(_run(pipe, guidance=1.0), _run(plain_pipe, guidance=1.0)) < 1e-4


def test_the_no_ops_say_why_and_change_nothing(folder, plain):
    pipe = _load(folder, fuse_qkv=True)
    assert "nothing to fuse" in _log(pipe, "fuse_qkv")[0]
    assert "no-op, QwenImageDiT has no cross-attention" in _log(pipe, "context_kv")[0]
    assert torch.equal(_run(pipe), plain)


def test_chunk_tokens_runs_the_image_mlp_in_chunks_with_the_same_latents(folder, plain):
    """Through the engine (the log), then 5 tokens a chunk (below the engine's minimum of 256: the tiny image
    stream has 24 tokens) so that the chunked path runs, with a last partial chunk."""
    from lightx2v.runtime.chunking import apply_chunking

    pipe = _load(folder, chunk_tokens=256)
    assert _log(pipe, "chunking") == ["chunking: dit, 2 blocks run 256 tokens at a time"]
    assert apply_chunking(pipe.pipeline.dit, 5) == 2
    torch.testing.assert_close(_run(pipe), plain, rtol=1e-4, atol=1e-5)  # GEMMs over fewer rows: last bits


@pytest.mark.parametrize("split", [7, 10, 30])
def test_chunked_block_keeps_the_edit_segments(split):
    """Qwen-Image-Edit-2511's zero_cond_t: two modulation sets split at the noisy image's tokens; a chunk that
    straddles the split, and chunks wholly past it, take the right set."""
    from lightx2v.models.qwen_image.dit_blocks import QwenImageBlock
    from tests.qwen_image_fixtures import randomize

    torch.manual_seed(0)
    block = QwenImageBlock(32, 2)
    randomize(block)
    x, txt, e0 = torch.randn(1, 20, 32), torch.randn(1, 6, 32), torch.randn(1, 2, 32)
    rope = torch.randn(26, 1, 8, 2)
    with torch.no_grad():
        whole = block(x, txt, e0, rope, split)
        block.chunk_tokens = 4
        chunked = block(x, txt, e0, rope, split)
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_vae_tiling_and_bf16_vae_stay_close_to_the_whole_fp32_decode(folder, plain_pipe):
    h, w = 128, 192  # wider than one 128 px tile
    whole = _run(plain_pipe, h, w, "pt")
    tiled = _load(folder, vae_tiling=True, vae_tile_size=128)
    assert "tile 128 px" in _log(tiled, "vae")[0]
    assert 0 < _rel(_run(tiled, h, w, "pt"), whole) < 0.05
    assert 0 < _rel(_run(_load(folder, vae_dtype="bf16"), h, w, "pt"), whole) < 0.05


def test_a_tiny_vae_is_refused_before_loading(folder, tmp_path):
    f = tmp_path / "taew2_1.pth"
    f.write_bytes(b"")
    with pytest.raises(InputError, match="tiny_vae cannot be used with Qwen-Image t2i models"):
        _load(folder, tiny_vae=f)
