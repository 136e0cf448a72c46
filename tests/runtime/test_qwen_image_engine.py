"""The engine's transforms on Qwen-Image, each through LightX2V.from_pretrained on the tiny folder
(tests/qwen_image_fixtures.py), against the plain float run on the same initial noise: quantization
(close), block offload (bit-identical), regional compile (aot_eager: the same), the feature caches
(run, skip, stay close), and the memory profile (models/qwen_image/spec.py `memory`): its per-token
formula against a live-tensor tracker on the DiT, and check_memory / the planner reading it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.config import CompileConfig  # noqa: E402
from tests.live_memory import LiveMemory  # noqa: E402

H, W = 64, 96
PROMPT, NEG = "a red cat on a mat", "blurry"


def _load(folder, **kw):
    kw = {"dtype": torch.float32} | kw
    return LightX2V.from_pretrained(folder, device="cpu", progress=False, **kw)


def _run(pipe, steps=3, **kw):
    z = torch.randn(1, 4, 1, H // 8, W // 8, generator=torch.Generator().manual_seed(9))
    return pipe.generate(PROMPT, negative_prompt=NEG, guidance_scale=4.0, height=H, width=W, num_inference_steps=steps,
                         latents=z, output_type="latent", **kw)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def folder(qwen_image_t2i):
    return qwen_image_t2i[0]


@pytest.fixture(scope="module")
def reference(folder):
    return _run(_load(folder)).latents


# fp8 (e4m3) keeps 3 mantissa bits: ~2x int8's per-weight error on these random weights (measured 0.052 vs int8's)
@pytest.mark.parametrize("scheme, tol", [("w8a8-int8", 0.05), ("w8a16-fp8", 0.1)])
def test_quantization_is_close_to_float(folder, reference, scheme, tol):
    pipe = _load(folder, quant=scheme)
    assert any(scheme in line or "quant" in line for line in pipe.pipeline.engine_log)
    got = _run(pipe).latents
    err = _rel(got, reference)
    assert 0 < err < tol, err  # quantized (not the float path), and close


def test_block_offload_matches_the_resident_run(folder, reference):
    """Not bit-identical here (unlike Wan2.1's CPU test): the offloaded DiT differs from the resident one by
    ~7e-6 absolute in fp32 on the CPU, same weights, strides and aligned buffers (cause not found); checked
    to fp32 rounding instead."""
    pipe = _load(folder, offload="block")
    assert "offload (block)" in pipe.pipeline.engine_log[0]
    torch.testing.assert_close(_run(pipe).latents, reference, rtol=1e-5, atol=1e-5)


def test_compile_gives_the_same_output(folder, reference):
    pipe = _load(folder, compile=CompileConfig(enabled=True, backend="aot_eager"))
    torch.testing.assert_close(_run(pipe).latents, reference, rtol=1e-5, atol=1e-5)


def test_taylorseer_skips_forwards_and_stays_close(folder):
    """TaylorSeer (no per-model numbers) runs on the MMDiT's block stack (`run_blocks`, block_runner)."""
    pipe = _load(folder, cache="taylorseer:interval=2")
    res = _run(pipe, steps=6)
    base = _run(_load(folder), steps=6)
    assert res.stats.get("model_calls_skipped", 0) > 0, res.stats
    assert res.stats["model_calls"] + res.stats["model_calls_skipped"] == base.stats["model_calls"]
    assert _rel(res.latents, base.latents) < 0.5


@pytest.mark.parametrize("cache", ["teacache", "magcache"])
def test_caches_with_published_coefficients_are_refused_by_name(folder, cache):
    """TeaCache / MagCache need coefficients published per model; none exist for Qwen-Image here."""
    from lightx2v.errors import InputError

    with pytest.raises(InputError, match=f"cache {cache} needs the model's published coefficients") as err:
        _load(folder, cache=cache)
    assert err.value.field == "cache"


# ---------------------------------------------------------------- memory


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_per_token_formula_matches_the_live_tensors(dtype):
    """(12 + 10 s) C + 4 d bytes a token of the joint sequence (the spec's docstring), at 2 and 3 blocks."""
    from lightx2v.models.qwen_image.dit import QwenImageDiT, QwenImageDiTConfig

    heads, d, h, w, lt = 4, 32, 32, 48, 64
    for layers in (2, 3):
        cfg = QwenImageDiTConfig(in_channels=64, out_channels=16, num_layers=layers, attention_head_dim=d,
                                 num_attention_heads=heads, joint_attention_dim=32, axes_dims_rope=(8, 12, 12))
        model = QwenImageDiT(cfg).to(dtype)
        for name, p in model.named_parameters():  # the loader keeps these fp32
            if any(k in name for k in QwenImageDiT._keep_in_fp32):
                p.data = p.data.float()
        x, ctx, t = torch.randn(1, h * w, 64, dtype=dtype), torch.randn(1, lt, 32, dtype=dtype), torch.tensor([500.0])
        with torch.no_grad(), LiveMemory(model) as live:
            model(x, t, ctx, [(1, h, w)])
        s, dim = dtype.itemsize, heads * d
        formula = ((12 + 10 * s) * dim + 4 * d) * (h * w + lt)
        assert abs(live.peak / formula - 1) < 0.03, (dtype, layers, live.peak / formula)


def test_check_memory_and_the_planner_read_the_profile(folder, monkeypatch):
    from lightx2v.config import EngineConfig
    from lightx2v.errors import ResourceError
    from lightx2v.loading.detect import detect
    from lightx2v.models.qwen_image.spec import memory
    from lightx2v.runtime.memory import estimate
    from lightx2v.runtime.planner import plan_memory

    mc = detect(folder)
    prof = memory(mc, torch.bfloat16)
    dim = mc.dit.num_attention_heads * mc.dit.attention_head_dim
    assert prof.token_bytes > 32 * dim and prof.attention_heads == mc.dit.num_attention_heads
    from lightx2v.api import make_engine

    engine = make_engine(device="cpu", dtype=torch.bfloat16)
    small = estimate(mc, engine, height=256, width=256, num_frames=1, budget=2**40)
    big = estimate(mc, engine, height=512, width=512, num_frames=1, budget=2**40)
    assert small.stages["denoise"] > 0 and big.stages["denoise"] == pytest.approx(4 * small.stages["denoise"], rel=1e-3)
    assert big.stages["VAE decode"] > small.stages["VAE decode"] > 0
    # the planner plans GPU memory: the device taken to be CUDA (as tests/runtime/test_planner.py does)
    monkeypatch.setattr(EngineConfig, "torch_device", lambda self: torch.device("cuda"))
    monkeypatch.setattr("lightx2v.runtime.memory.available_bytes", lambda device, loaded=False: 2**40)
    plan = plan_memory(mc, engine, "64GB", None, height=512, width=512, num_frames=1, guidance_scale=4.0)
    assert plan.engine.offload.granularity is None  # a tiny model fits as it is
    with pytest.raises(ResourceError):
        plan_memory(mc, engine, "1MB", None, height=1024, width=1024, num_frames=1, guidance_scale=4.0)


def test_first_block_cache_is_refused_in_one_line(folder):
    """The MMDiT's block stack takes no per-block K/V list to split: the model says which caches it supports."""
    from lightx2v.errors import InputError

    with pytest.raises(InputError, match="cache firstblock is not supported by QwenImageDiT \\(its block stack "
                                         "supports teacache, magcache, taylorseer\\)") as err:
        _load(folder, cache="firstblock")
    assert err.value.field == "cache"
