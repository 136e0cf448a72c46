"""Encoder offload (`offload_encoders`, lightx2v.runtime.offload.placed) and the text encoder on the CPU
(`text_encoder_device`): the same frames as resident, each encoder placed for its own stage only,
and the memory estimate counting them in their stage instead of the resident weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightx2v import LightX2V
from lightx2v.config import EngineConfig
from lightx2v.errors import InputError

KW = dict(prompt="a red fox in the snow", height=64, width=64, num_frames=5, num_inference_steps=2, seed=3,
          output_type="np")


def _load(root, **kw):
    return LightX2V.from_pretrained(root, device="cpu", dtype="fp32", progress=False, **kw)


@pytest.fixture(scope="module")
def reference(tiny_official_dir):
    return _load(tiny_official_dir).generate(**KW).frames


def test_offloaded_encoders_give_the_same_frames_and_are_placed_per_stage(tiny_official_dir, reference):
    pipe = _load(tiny_official_dir, offload_encoders=True)
    off = pipe.pipeline.encoder_offload
    assert set(off.models) == {"text_encoder", "vae"}  # t2v: no CLIP
    assert any("offload (encoders): text_encoder, vae" in line for line in pipe.pipeline.engine_log)
    events = []
    activate, release = off.activate, off.release
    off.activate = lambda name: (events.append(("on", name)), activate(name))[1]
    off.release = lambda name: (events.append(("off", name)), release(name))[1]
    t5_calls = []
    off.models["text_encoder"].register_forward_pre_hook(lambda m, a: t5_calls.append(off.resident))
    frames = pipe.generate(**KW).frames
    np.testing.assert_array_equal(frames, reference)
    # the text encoder runs while it is the one placed, and each goes back when its stage ends
    assert t5_calls and all(r == "text_encoder" for r in t5_calls)
    assert events == [("on", "text_encoder"), ("off", "text_encoder"), ("on", "vae"), ("off", "vae")]
    assert off.resident is None


def test_text_encoder_on_the_cpu_gives_the_same_frames(tiny_official_dir, reference):
    pipe = _load(tiny_official_dir, text_encoder_device="cpu")
    assert any("text_encoder on cpu" in line for line in pipe.pipeline.engine_log)
    assert next(pipe.pipeline.text_encoder.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(pipe.generate(**KW).frames, reference)


def test_text_encoder_device_must_be_the_cpu():
    with pytest.raises(InputError, match="text_encoder_device must be 'cpu'"):
        EngineConfig(device="cpu", text_encoder_device="cuda:1")


def test_offload_and_cpu_text_encoder_load_on_the_host():
    assert EngineConfig(device="cpu", offload_encoders=True).staging_device().type == "cpu"
    assert EngineConfig(device="cpu", text_encoder_device="cpu").staging_device().type == "cpu"


def test_memory_estimate_counts_offloaded_encoders_in_their_stage(tiny_official_dir):
    from lightx2v.loading.detect import detect
    from lightx2v.runtime import memory

    mc = detect(tiny_official_dir)
    size = dict(height=480, width=832, num_frames=81, guidance_scale=5.0)
    base = EngineConfig(device="cpu", dtype=torch.float32)
    comps = memory.weight_bytes(mc, base)
    resident = memory.estimate(mc, base, **size)
    if not resident.weights_counted:
        pytest.skip("this machine's free memory is below the activations alone")
    off = memory.estimate(mc, EngineConfig(device="cpu", dtype=torch.float32, offload_encoders=True), **size)
    assert off.weights == resident.weights - comps["text_encoder"] - comps["vae"]
    assert off.stages["text encoder"] == resident.stages["text encoder"] + comps["text_encoder"]
    assert off.stages["VAE decode"] == resident.stages["VAE decode"] + comps["vae"]
    cpu_t5 = memory.estimate(mc, EngineConfig(device="cpu", dtype=torch.float32, text_encoder_device="cpu"), **size)
    assert cpu_t5.weights == resident.weights - comps["text_encoder"]
    assert cpu_t5.stages == resident.stages
