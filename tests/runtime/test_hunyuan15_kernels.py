"""kernels='triton' on HunyuanVideo-1.5 through the engine (the tiny diffusers folder, tests/hunyuan15_fixtures.py):
the kernels step gives the DiT's blocks and head the fused Triton ops (the interpreter on CPU), within fp32 rounding
of the torch reference; with block offload the same latents as resident. One CFG branch (guidance 1) and two steps:
the interpreter runs one program at a time. (The model-level parity, compile and quantization:
tests/models/test_hunyuan15_fused.py.)"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("triton")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.ops.fused import get_fused  # noqa: E402
from tests.hunyuan15_fixtures import LATENT, write_hunyuan15  # noqa: E402

H = W = 32
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU machine the kernels compile for real


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_hunyuan15(tmp_path_factory.mktemp("hy15k"))[0]


def _load(folder, **kw):
    return LightX2V.from_pretrained(folder, device=DEV, dtype=torch.float32, progress=False, **kw)


def _run(pipe):
    z = torch.randn(1, LATENT, 1, H // 16, W // 16, generator=torch.Generator().manual_seed(3))
    return pipe.generate("a red door", height=H, width=W, num_frames=1, num_inference_steps=2, guidance_scale=1.0,
                         latents=z, output_type="latent").latents


@pytest.fixture(scope="module")
def triton_latents(folder):
    pipe = _load(folder, kernels="triton")
    assert "kernels: dit: triton" in pipe.pipeline.engine_log
    fused = [m for m in pipe.pipeline.dit.modules() if hasattr(m, "fused_ops")]
    assert len(fused) == 2 + 1 and all(m.fused_ops is get_fused("triton") for m in fused)  # blocks, head
    return _run(pipe)


def test_triton_is_within_fp32_rounding_of_torch(folder, triton_latents):
    ref = _run(_load(folder))
    assert (triton_latents - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_triton_with_block_offload_gives_the_same_latents(folder, triton_latents):
    pipe = _load(folder, kernels="triton", offload="block")
    assert any(line.startswith("placement") and "offload (block" in line for line in pipe.pipeline.engine_log)
    assert torch.equal(_run(pipe), triton_latents)
