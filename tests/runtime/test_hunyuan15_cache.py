"""The feature caches on HunyuanVideo-1.5 (lightx2v.runtime.cache) with the tiny diffusers folder: TaylorSeer,
TeaCache (LightX2V's published HV1.5 coefficients, on block 0's modulated input) and MagCache (LightX2V's
published 480p I2V ratios) and first-block (block 0, then the rest from block 0's image and text streams) skip
block-stack runs and stay close to the uncached video, switched off they give it exactly; first-block skips what
its rule says, the same with sequential and batched CFG."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402
from tests.hunyuan15_fixtures import write_hunyuan15  # noqa: E402

H = W = 64
KW = dict(height=H, width=W, num_frames=5, num_inference_steps=6, output_type="np")
PROMPT = "a red door"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_hunyuan15(tmp_path_factory.mktemp("hy15c"))[0]


def _noise():
    return torch.randn(1, 4, 2, H // 16, W // 16, generator=torch.Generator().manual_seed(2))


def _load(folder, cache=None):
    return LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, cache=cache)


@pytest.fixture(scope="module")
def plain(folder):
    return _load(folder).generate(PROMPT, latents=_noise(), **KW)


def _check(folder, plain, cache, off):
    got = _load(folder, cache).generate(PROMPT, latents=_noise(), **KW)
    assert got.stats["model_calls_skipped"] > 0
    # the skipped steps reuse stored residuals (on random weights far from the computed ones: no closeness bound)
    assert np.isfinite(got.frames).all() and np.abs(got.frames - plain.frames).max() > 1e-4
    same = _load(folder, off).generate(PROMPT, latents=_noise(), **KW)
    assert same.stats["model_calls_skipped"] == 0
    assert np.abs(same.frames - plain.frames).max() < 1e-6
    return got


def test_taylorseer(folder, plain):
    got = _check(folder, plain, "taylorseer:interval=3,warmup=2", "taylorseer:interval=1")
    # per branch, steps s < 2 and (s - 3) % 3 == 0 run: 0, 1, 3 of 6 (x 2 CFG branches)
    assert (got.stats["model_calls"], got.stats["model_calls_skipped"]) == (6, 6)


def test_teacache_uses_lightx2vs_hy15_coefficients(folder, plain):
    pipe = _load(folder, "teacache:threshold=5")
    assert any("coefficients hy15-t2v-480p, modulated input" in line for line in pipe.pipeline.engine_log)
    _check(folder, plain, "teacache:threshold=5", "teacache:threshold=0")


def test_the_teacache_indicator_is_block_0s_modulated_input(folder):
    dit = _load(folder).pipeline.dit
    x, vec = torch.randn(1, 6, dit.config.hidden_size), torch.randn(1, dit.config.hidden_size)
    lin = dit.double_blocks[0].img_mod.linear
    shift, scale = (F.silu(vec) @ lin.weight.T + lin.bias).chunk(6, dim=-1)[:2]
    want = F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    assert torch.allclose(dit.cache_indicator(x, vec), want, atol=1e-5)


def test_magcache_ratios_are_published_for_480p_i2v_only(folder, plain):
    with pytest.raises(InputError, match="magcache has no published ratios named 'hy15-t2v-480p'"):
        _load(folder, "magcache")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the i2v set on a t2v checkpoint: said in a warning
        _check(folder, plain, {"method": "magcache", "model": "hy15-i2v-480p", "threshold": 0.5},
               {"method": "magcache", "model": "hy15-i2v-480p", "threshold": 0})


def test_firstblock(folder, plain):
    """Threshold 0 runs block 0 and then blocks 1.. on its image and text streams: exactly the uncached video."""
    got = _check(folder, plain, "firstblock:threshold=1e9", "firstblock:threshold=0")
    # only the first step runs the rest, per branch; every later one reuses its residual
    assert (got.stats["model_calls"], got.stats["model_calls_skipped"]) == (2, 10)


def test_firstblock_split_carries_the_text_stream(folder):
    """run_blocks over block 0 hands back block 0's text stream (`carry`); blocks 1.. from it give the whole
    stack's output bit for bit, and from the stack's input text stream (the split without it) they do not."""
    dit = _load(folder).pipeline.dit
    c, g = dit.config.hidden_size, torch.Generator().manual_seed(4)
    kw = dict(e=torch.randn(1, c, generator=g), txt=torch.randn(1, 5, c, generator=g), txt_valid=None,
              rope=dit.rope((1, 2, 3), torch.device("cpu")))
    x = torch.randn(1, 6, c, generator=g)
    with torch.no_grad():
        whole = dit.run_blocks(x, **kw)
        carry = {}
        x1 = dit.run_blocks(x, **kw, blocks=slice(0, 1), carry=carry)
        assert set(carry) == {"txt"} and not torch.equal(carry["txt"], kw["txt"])
        assert torch.equal(dit.run_blocks(x1, **{**kw, **carry}, blocks=slice(1, None)), whole)
        assert not torch.equal(dit.run_blocks(x1, **kw, blocks=slice(1, None)), whole)


def _record(pipe) -> list:
    """[(branch, ran)] for every branch of every call, in order (the runner's commit, spied)."""
    method, log = pipe.pipeline.dit.block_runner.method, []
    commit = method.commit
    method.commit = lambda state, d, ran: log.append((state.branch, ran)) or commit(state, d, ran)
    return log


@pytest.mark.parametrize("threshold, want", [(1e9, [True] + [False] * 5), (1.75, [True, False, False, False, False, True])])
def test_firstblock_decides_alike_with_sequential_and_batched_cfg(folder, threshold, want):
    """The same steps run the rest with the two branches as two calls or as one batch of 2 (each branch's
    first-block residual, compared with its own last computed one), and the latents agree. (On these random
    weights block 0's residual moves a lot: rel. L1 1.25 .. 1.70 from step 0's in steps 1-4, over 2 at step 5.)"""
    runs = {}
    for mode in ("sequential", "batched"):
        pipe = LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False,
                                        cache=f"firstblock:threshold={threshold}", cfg_mode=mode)
        log = _record(pipe)
        out = pipe.generate(PROMPT, latents=_noise(), **{**KW, "output_type": "latent"})
        runs[mode] = out, [ran for b, ran in log if b == "cond"], [ran for b, ran in log if b == "uncond"]
    (seq, cond, uncond), (bat, bcond, buncond) = runs["sequential"], runs["batched"]
    assert cond == uncond == bcond == buncond == want
    assert seq.stats["model_calls_skipped"] == 2 * bat.stats["model_calls_skipped"] == 2 * cond.count(False)
    torch.testing.assert_close(bat.latents, seq.latents, rtol=1e-4, atol=1e-4)
