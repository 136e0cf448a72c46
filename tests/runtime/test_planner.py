"""The memory planner (lightx2v.runtime.planner): its choices for a few budgets at the real 14B shapes
(built on meta: nothing is read), a clear refusal, the size parser, and the API path."""

from __future__ import annotations

import pytest
import torch

from lightx2v.config import EngineConfig
from lightx2v.errors import InputError, ResourceError
from lightx2v.loading.detect import detect
from lightx2v.runtime.planner import PLAN_CHUNK, parse_size, plan_memory
from tests.runtime.test_memory import _released

GIB = 2**30
SIZE = dict(height=480, width=832, num_frames=81, guidance_scale=5.0)


@pytest.fixture(scope="module")
def big(tiny_official_dir):
    return _released(detect(tiny_official_dir), "14B")


@pytest.fixture
def cuda(monkeypatch):
    """Plan for a CUDA device on this CPU machine (the planner only builds models on meta)."""
    monkeypatch.setattr(EngineConfig, "torch_device", lambda self: torch.device("cuda"))
    return EngineConfig(device="cpu", dtype=torch.bfloat16)


def test_sizes_parse_and_refuse():
    assert parse_size("8GB", "max_vram") == 8 * GIB == parse_size("8 GiB", "max_vram")
    assert parse_size("7.5g", "max_vram") == int(7.5 * GIB) and parse_size("8192MB", "x") == 8 * GIB
    assert parse_size(1000, "x") == 1000
    for bad in ("eight", "8XB", "-1GB", 0):
        with pytest.raises(InputError, match="max_vram must be"):
            parse_size(bad, "max_vram")


SAVERS = ("encoders offloaded", "DiT block offload (2 buffers)", "text encoder on the CPU", "VAE tiled",
          "activations chunked")


@pytest.mark.parametrize("vram, quant, steps", [
    ("80GB", None, ()),                                                            # everything resident
    ("40GB", None, ("encoders offloaded",)),                                        # T5 only for its stage
    ("24GB", None, ("encoders offloaded", "DiT block offload (2 buffers)")),
    ("8GB", None, SAVERS),
    ("6GB", None, SAVERS),                                                         # chunked: ~5.5 GiB with margin
    ("4GB", "w8a8-fp8", SAVERS + ("DiT phase offload (2 buffers)", "context K/V per block")),
    ("40GB", "w8a8-fp8", ()),                                                      # fp8 weights fit as they are
])
def test_choices_for_a_few_budgets(big, cuda, vram, quant, steps):
    import dataclasses

    engine = dataclasses.replace(cuda, quant=quant) if quant else cuda
    plan = plan_memory(big, engine, vram, **SIZE)
    assert plan.steps == steps
    assert plan.device_need <= parse_size(vram, "max_vram")
    e = plan.engine
    assert e.offload_encoders == ("encoders offloaded" in steps)
    assert e.offload.granularity == ("phase" if "DiT phase offload (2 buffers)" in steps
                                     else "block" if "DiT block offload (2 buffers)" in steps else None)
    assert e.vae_tiling == ("VAE tiled" in steps) and (e.text_encoder_device == "cpu") == ("text encoder on the CPU" in steps)
    assert (e.chunk_tokens == PLAN_CHUNK) == ("activations chunked" in steps)
    assert e.context_kv == ("context K/V per block" not in steps)
    assert e.quant.scheme == quant  # the precision is the user's
    assert f"max_vram {parse_size(vram, 'x') / GIB:.1f} GiB" in plan.describe()


def test_host_budget_adds_lazy_loading(big, cuda):
    roomy = plan_memory(big, cuda, "8GB", "64GB", **SIZE)
    tight = plan_memory(big, cuda, "8GB", "16GB", **SIZE)
    assert not roomy.engine.offload.lazy_load and roomy.host_need > 16 * GIB  # the 14B DiT lives in host memory
    assert tight.engine.offload.lazy_load and tight.steps[-1] == "lazy load" and tight.host_need <= 16 * GIB


def test_refusal_names_what_the_smallest_plan_needs(big, cuda):
    with pytest.raises(ResourceError, match=r"^832x480, 81 frames does not fit max_vram 3\.0 GiB even with .*"
                                            r"DiT phase offload .*: that needs \d+\.\d GiB on the GPU \((denoise|VAE decode)\); "
                                            r"lower the size or frames, or the precision"):
        plan_memory(big, cuda, "3GB", **SIZE)


def test_compile_keeps_block_offload(big, cuda):
    import dataclasses

    with pytest.raises(ResourceError, match="even with .*DiT block offload"):  # phase offload is not a step
        plan_memory(big, dataclasses.replace(cuda, compile=dataclasses.replace(cuda.compile, enabled=True)), "4GB",
                    **SIZE)


def test_api_plans_before_loading(tiny_official_dir):
    from lightx2v import LightX2V

    with pytest.raises(InputError, match="max_vram plans GPU memory; the device is the CPU"):
        LightX2V.from_pretrained(tiny_official_dir, device="cpu", max_vram="8GB", progress=False)
    with pytest.raises(InputError, match="max_ram is planned together with max_vram"):
        LightX2V.from_pretrained(tiny_official_dir, device="cpu", max_ram="8GB", progress=False)
