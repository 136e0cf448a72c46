"""The loop: step context, guidance modes, per-expert scales, stats, cancel, threads."""

from __future__ import annotations

import threading

import pytest
import numpy as np
import torch

from lightx2v import LightX2V
from lightx2v.errors import InputError
from lightx2v.pipelines.base import GenerationCancelled, Guidance, StepContext, denoise


class _Sched:
    """A scheduler stand-in: x <- x - 0.1 v at three timesteps."""

    timesteps = torch.tensor([900.0, 500.0, 100.0])

    def step(self, v, x):
        return x - 0.1 * v


class _Cond:
    def __init__(self, c):
        self.c = c

    def cat_batch(self, other):
        return _Cond(torch.cat([self.c, other.c]))


def test_context_reaches_the_model_and_experts_get_their_scale():
    seen = []

    def model_fn(x, t, cond, ctx):
        seen.append((ctx.step, ctx.num_steps, ctx.timestep, ctx.branch, ctx.expert))
        return x * 0 + cond.c

    x = torch.zeros(1, 2)
    g = Guidance(scale=3.0, scales={"low": 2.0})
    out = denoise(model_fn, _Sched(), x, _Cond(torch.ones(1, 2)), _Cond(torch.zeros(1, 2)), g,
                  expert_for=lambda i, t: "high" if t > 600 else "low", progress=False)
    assert seen[:2] == [(0, 3, 900.0, "cond", "high"), (0, 3, 900.0, "uncond", "high")]
    assert [s[4] for s in seen[2:]] == ["low"] * 4
    # v = v_u + g (v_c - v_u) = g with v_c = 1, v_u = 0: 3 for "high" (the default scale), 2 for "low"
    torch.testing.assert_close(out, torch.full((1, 2), -0.1 * (3 + 2 + 2)))


def test_batched_cfg_is_one_call_of_two():
    calls = []

    def model_fn(x, t, cond, ctx):
        calls.append((x.shape[0], t.shape[0], ctx.branch))
        return cond.c.expand_as(x) * (t[:, None] / 1000)

    x = torch.zeros(1, 2)
    kw = dict(cond=_Cond(torch.ones(1, 2)), uncond=_Cond(-torch.ones(1, 2)), progress=False)
    seq = denoise(model_fn, _Sched(), x, guidance=Guidance(4.0), **kw)
    n_seq = len(calls)
    calls.clear()
    bat = denoise(model_fn, _Sched(), x, guidance=Guidance(4.0, mode="batched"), **kw)
    assert n_seq == 6 and calls == [(2, 2, "cfg")] * 3
    torch.testing.assert_close(bat, seq, rtol=0, atol=0)


def test_rescaled_cfg_keeps_the_conditional_std():
    ctx = StepContext(0, 1, 500.0)
    v_c, v_u = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(0)), torch.zeros(1, 3, 8)
    conds = {"c": v_c, "u": v_u}
    fn = (lambda x, t, c, ctx: conds[c])
    plain = Guidance(7.0)(fn, v_c, torch.ones(1), "c", "u", ctx)
    full = Guidance(7.0, rescale=1.0)(fn, v_c, torch.ones(1), "c", "u", ctx)
    torch.testing.assert_close(plain, 7.0 * v_c)
    torch.testing.assert_close(full.std(), v_c.std())


@pytest.fixture(scope="module")
def pipe(tiny_official_dir):
    return LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)


def _run(pipe, **kw):
    shape = pipe.pipeline.geometry.latent_shape(5, 32, 32)
    kw.setdefault("latents", torch.randn(shape, generator=torch.Generator().manual_seed(5)))
    return pipe.generate(prompt="a boat", height=32, width=32, num_frames=5, num_inference_steps=3,
                         output_type="latent", **kw)


def test_stats_count_the_forwards(pipe):
    assert _run(pipe, guidance_scale=4.0).stats == {"model_calls": 6, "model_samples": 6}
    assert _run(pipe, guidance_scale=1.0).stats == {"model_calls": 3, "model_samples": 3}


def test_batched_cfg_matches_sequential_on_the_dit(tiny_official_dir, pipe):
    batched = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, cfg_mode="batched",
                                       progress=False)
    a, b = _run(pipe, guidance_scale=4.0), _run(batched, guidance_scale=4.0)
    assert b.stats == {"model_calls": 3, "model_samples": 6}
    torch.testing.assert_close(b.latents, a.latents, rtol=1e-5, atol=1e-5)


def test_cancel_is_not_a_value_error(pipe):
    assert not issubclass(GenerationCancelled, ValueError)
    with pytest.raises(GenerationCancelled, match="after step 1 of 3"):
        _run(pipe, callback=lambda info: False)


def test_one_expert_model_refuses_a_second_scale(pipe):
    with pytest.raises(InputError, match="guidance_scale_2 is a second expert's scale; Wan2.1 models have one expert"):
        _run(pipe, guidance_scale_2=3.0)


def test_two_threads_share_a_pipeline_safely(pipe):
    """Generations from two threads serialize on the pipeline's lock: each gets its own exact result."""
    seeds = (11, 12)
    alone = {s: _run(pipe, latents=None, seed=s).latents for s in seeds}
    pipe.pipeline.dit.rope_cache.reset()
    results, errors = {}, []

    def work(s):
        try:
            results[s] = _run(pipe, latents=None, seed=s).latents
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in seeds for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for s in seeds:
        torch.testing.assert_close(results[s], alone[s], rtol=0, atol=0)
    assert len(pipe.pipeline.dit.rope_cache) == 1  # one grid, one table


def test_video_to_uint8_is_the_encoders_rounding_bit_for_bit():
    from lightx2v.io.video import to_uint8
    from lightx2v.pipelines.base import video_to_frames, video_to_uint8

    video = torch.rand(1, 3, 5, 8, 6, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1  # past [-1, 1] too
    video[0, 0, 0, 0, :3] = torch.tensor([-1.0, 1.0, 0.0])
    u8 = video_to_uint8(video)
    assert u8.dtype == np.uint8 and u8.shape == (5, 8, 6, 3)
    np.testing.assert_array_equal(u8, to_uint8(video_to_frames(video)))
