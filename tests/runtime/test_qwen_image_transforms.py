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


def _run(pipe, h=H, w=W, output_type="latent"):
    z = torch.randn(1, 4, 1, h // 8, w // 8, generator=torch.Generator().manual_seed(9))
    res = pipe.generate("a red cat", negative_prompt="blurry", guidance_scale=4.0, height=h, width=w,
                        num_inference_steps=2, latents=z, output_type=output_type)
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


@pytest.mark.parametrize("kw, tol", [(dict(cfg_mode="batched", attention="self=reference,cross=torch_sdpa"), 1e-5),
                                     (dict(kernels="triton"), 1e-4)], ids=["batched_cfg_attention_roles", "triton"])
def test_close_transforms_stay_close(folder, plain, kw, tol):
    pipe = _load(folder, **kw)
    if "kernels" in kw:
        assert _log(pipe, "kernels") == ["kernels: dit: triton"]
    assert _rel(_run(pipe), plain) < tol


def test_the_no_ops_say_why_and_change_nothing(folder, plain):
    pipe = _load(folder, fuse_qkv=True, chunk_tokens=256)
    assert "nothing to fuse" in _log(pipe, "fuse_qkv")[0]
    assert _log(pipe, "chunking") == ["chunking: dit has no chunked path; it runs whole"]
    assert "no-op, QwenImageDiT has no cross-attention" in _log(pipe, "context_kv")[0]
    assert torch.equal(_run(pipe), plain)


def test_vae_tiling_and_bf16_vae_stay_close_to_the_whole_fp32_decode(folder, plain_pipe):
    h, w = 192, 256  # larger than one 128 px tile
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
