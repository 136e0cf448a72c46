"""Cross-attention K/V computed once per generation (lightx2v.runtime.context_kv): bit-identical to
computing them at every step, reused across steps and CFG branches, never across generations."""

from __future__ import annotations

import pytest
import torch

from lightx2v import LightX2V
from lightx2v.runtime.context_kv import ContextKVCache
from tests.quant.test_quant_lora import _write_lora

PROMPT = "a fox in the snow"
STEPS = 3


def _gen(pipe, seen=None, **kw):
    shape = pipe.pipeline.geometry.latent_shape(5, 32, 32)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(3))

    def callback(info):
        if seen is not None:
            cache = pipe.pipeline.dit.context_cache
            seen.append((cache.hits, cache.misses, len(cache)))

    return pipe.generate(prompt=PROMPT, height=32, width=32, num_frames=5, num_inference_steps=STEPS,
                         guidance_scale=3.0, latents=latents, output_type="latent", callback=callback, **kw).latents


@pytest.fixture(scope="module")
def pipes(tiny_official_dir):
    load = (lambda **kw: LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32,
                                                  progress=False, **kw))
    return {"on": load(), "off": load(context_kv=False), "batched": load(cfg_mode="batched"),
            "batched_off": load(cfg_mode="batched", context_kv=False)}


def test_reused_across_steps_and_branches_and_bit_identical(pipes):
    on, off = pipes["on"], pipes["off"]
    assert on.pipeline.dit.context_cache is not None and off.pipeline.dit.context_cache is None
    assert any(line.startswith("context_kv: dit") for line in on.pipeline.engine_log)
    seen = []
    torch.testing.assert_close(_gen(on, seen), _gen(off), rtol=0, atol=0)
    # two branches (cond, uncond): computed at the first step, reused at every later one
    assert seen == [(2 * i, 2, 2) for i in range(STEPS)]
    assert len(on.pipeline.dit.context_cache) == 0  # freed after the generation


def test_batched_cfg_joins_once_and_reuses(pipes):
    seen = []
    torch.testing.assert_close(_gen(pipes["batched"], seen), _gen(pipes["batched_off"]), rtol=0, atol=0)
    assert seen == [(i, 1, 1) for i in range(STEPS)]  # one batch of 2, computed once


def test_not_reused_across_generations_with_another_lora(tiny_official_dir, tmp_path):
    """A dynamic LoRA switched between generations (it changes the k/v projections) is seen."""
    lora = tmp_path / "lora.safetensors"
    _write_lora(lora, "official")
    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False,
                                    lora=[(lora, 1.0)], lora_mode="dynamic")
    with_lora = _gen(pipe)
    pipe.set_lora([])
    base = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False,
                                    context_kv=False)
    torch.testing.assert_close(_gen(pipe), _gen(base), rtol=0, atol=0)
    assert not torch.equal(with_lora, _gen(base))


def test_cache_keys_on_the_tensor_objects_and_their_version():
    cache = ContextKVCache(max_entries=2)
    calls = []
    a, b = torch.ones(2), torch.zeros(2)
    compute = (lambda tag: (lambda: calls.append(tag) or tag))
    assert cache.get((a, None), compute("a")) == "a"
    assert cache.get((a, None), compute("again")) == "a"        # same object, unchanged: stored value
    assert cache.get((a.clone(), None), compute("clone")) == "clone"  # equal values, another tensor
    a.add_(1)                                                     # changed in place: recomputed
    assert cache.get((a, None), compute("a2")) == "a2"
    assert cache.get((a, b), compute("ab")) == "ab" and len(cache) == 2  # bounded
    cache.reset()
    assert len(cache) == 0 and cache.hits == 0
    assert calls == ["a", "clone", "a2", "ab"]
