"""HunyuanVideo-1.5's memory profile (models/hunyuan15/spec.py `memory`), read by the estimate
(lightx2v.runtime.memory) and the planner (max_vram): the per-token count, the VAE's default tiles, and the
planner's choices at the released 8.3B DiT's shapes (built on meta: nothing is read)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v.config import EngineConfig  # noqa: E402
from lightx2v.errors import ResourceError  # noqa: E402
from lightx2v.loading.detect import detect  # noqa: E402
from lightx2v.runtime.memory import estimate  # noqa: E402
from lightx2v.runtime.planner import plan_memory  # noqa: E402
from tests.hunyuan15_fixtures import write_hunyuan15  # noqa: E402

GIB = 2**30
SIZE = dict(height=480, width=848, num_frames=121, guidance_scale=6.0)


@pytest.fixture(scope="module")
def mc(tmp_path_factory):
    return detect(write_hunyuan15(tmp_path_factory.mktemp("hy15m"))[0])


@pytest.fixture(scope="module")
def released(mc):
    """The tiny folder with the released 8.3B DiT's architecture (the encoders stay tiny)."""
    from lightx2v.models.hunyuan15.dit_config import HunyuanVideo15DiTConfig

    return dataclasses.replace(mc, arch=dataclasses.replace(mc.arch, dit=HunyuanVideo15DiTConfig()))


@pytest.fixture
def cuda(monkeypatch):
    monkeypatch.setattr(EngineConfig, "torch_device", lambda self: torch.device("cuda"))
    return EngineConfig(device="cpu", dtype=torch.bfloat16)


def test_the_profile_counts_the_block_and_the_encoders(released):
    from lightx2v.models.hunyuan15.spec import memory

    prof = memory(released, torch.bfloat16)
    c, d = 2048, 128
    assert prof.token_bytes == pytest.approx((16 + 20) * c + 4 * d, rel=0.02)  # + the conditioning share (~1%)
    assert prof.token_bytes > (16 + 20) * c + 4 * d
    assert prof.attention_heads == 16 and prof.vae_tile == 256 and prof.vae_whole_clip
    assert prof.text_bytes > 1108 * 1108 * 2  # at least the causal mask of one prompt


def test_the_estimate_reads_it(released):
    engine = EngineConfig(device="cpu", dtype=torch.bfloat16)
    small = estimate(released, engine, height=480, width=848, num_frames=61, budget=2**50)
    big = estimate(released, engine, height=480, width=848, num_frames=121, budget=2**50)
    assert big.stages["denoise"] == pytest.approx(small.stages["denoise"] * 31 / 16, rel=1e-3)  # latent frames
    # the VAE decodes in 256 px tiles by default: asking for tiles of the same size changes nothing,
    # larger tiles (896 px: whole frames) need more
    tiled = estimate(released, dataclasses.replace(engine, vae_tiling=True, vae_tile_size=256), **SIZE, budget=2**50)
    whole = estimate(released, dataclasses.replace(engine, vae_tiling=True, vae_tile_size=896), **SIZE, budget=2**50)
    default = estimate(released, engine, **SIZE, budget=2**50)
    assert default.stages["VAE decode"] == tiled.stages["VAE decode"] < whole.stages["VAE decode"]


def test_the_planner_offloads_the_83b_dit_for_a_small_budget(released, cuda):
    roomy = plan_memory(released, cuda, "80GB", **SIZE)
    assert roomy.steps == () and roomy.device_need > 16 * GIB  # the bf16 DiT alone is about 16 GiB
    small = plan_memory(released, cuda, "12GB", **SIZE)
    assert "DiT block offload (2 buffers)" in small.steps and small.device_need <= 12 * GIB
    assert small.engine.offload.granularity in ("block", "phase")
    with pytest.raises(ResourceError, match="does not fit max_vram"):
        plan_memory(released, cuda, "1GB", **SIZE)
