"""Model offload (lightx2v.runtime.offload): the DiTs in host memory, the running one on the device,
the next expert of a two-expert model prefetched one step before the switch; the frames unchanged."""

from __future__ import annotations

import pytest
import torch

from lightx2v import LightX2V
from lightx2v.config import EngineConfig, OffloadConfig
from lightx2v.errors import InputError

KW = dict(prompt="a red fox in the snow", height=32, width=48, num_frames=5, num_inference_steps=4, seed=3,
          output_type="latent", guidance_scale=3.0, guidance_scale_2=2.0)


def _load(root, device="cpu", **kw):
    return LightX2V.from_pretrained(root, device=device, dtype="fp32", progress=False, **kw)


def test_offload_config_refuses_unknown_granularity():
    assert EngineConfig(device="cpu", offload="model").offload == OffloadConfig("model")
    with pytest.raises(InputError, match="offload must be one of model"):
        EngineConfig(device="cpu", offload="blocks")


def test_two_experts_offloaded_give_the_same_latents(wan22_t2v_dirs):
    root = wan22_t2v_dirs[0]
    ref = _load(root).generate(**KW).latents
    pipe = _load(root, offload="model")
    off = pipe.pipeline.offload
    assert set(off.models) == {"dit", "dit_2"} and off.resident is None
    assert any("offload (model): dit, dit_2" in line for line in pipe.pipeline.engine_log)
    calls = []
    for name, model in off.models.items():
        model.register_forward_pre_hook(lambda m, a, name=name: calls.append((name, off.resident)))
    out = pipe.generate(**KW).latents
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # each call found its expert resident (the offload's hook runs first), one move per switch
    assert all(name == resident for name, resident in calls)
    assert [n for n, _ in calls][:1] == ["dit"] and off.moves == 2 and off.resident == "dit_2"
    pipe.generate(**KW)  # a second run starts with the high-noise expert again
    assert off.moves == 4


def test_memory_estimate_counts_the_dits_on_the_device(wan22_t2v_dirs):
    from lightx2v.loading.detect import detect
    from lightx2v.runtime.memory import weight_bytes

    mc = detect(wan22_t2v_dirs[0])
    full = weight_bytes(mc, EngineConfig(device="cpu", dtype=torch.float32))
    one = weight_bytes(mc, EngineConfig(device="cpu", dtype=torch.float32, offload=OffloadConfig("model", prefetch=False)))
    two = weight_bytes(mc, EngineConfig(device="cpu", dtype=torch.float32, offload="model"))
    dit = full["dit"]
    assert full["dit_2"] == dit and sum(one.values()) == sum(full.values()) - dit
    assert sum(two.values()) == sum(full.values())  # prefetch: both experts during one step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_only_the_running_expert_is_on_the_gpu_and_the_switch_is_prefetched(wan22_t2v_dirs):
    root = wan22_t2v_dirs[0]
    ref = _load(root, device="cuda").generate(**KW).latents
    pipe = _load(root, device="cuda", offload="model")
    off = pipe.pipeline.offload
    assert off.on_device() == []  # nothing on the GPU until a DiT runs
    for m in off.models.values():
        assert all(p.is_pinned() for p in m.parameters())
    seen, prefetched = [], []
    orig = off.prefetch
    off.prefetch = lambda name: (prefetched.append((name, off.resident)), orig(name))[1]
    for name, model in off.models.items():
        model.register_forward_hook(lambda m, a, o, name=name: seen.append((name, tuple(off.on_device()), tuple(off._pending))))
    out = pipe.generate(**KW).latents
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # only the running expert's weights are on the GPU; the low-noise one was on its way (prefetched
    # on the side stream) during the last high-noise step, and nothing else was copied
    assert all(d == (n,) for n, d, _ in seen), seen
    high = [pending for n, _, pending in seen if n == "dit"]
    assert high[0] == () and high[-1] == ("dit_2",)
    assert prefetched == [("dit_2", "dit")] and off.moves == 2
