"""The engine's transforms on a tiny HunyuanVideo-1.5 T2V folder (tests/hunyuan15_fixtures.py), each
through from_pretrained against the plain load on the same weights and the same latents: w8a8-int8
quantization (close), block offload (equal: the same weights, placed otherwise), regional compile with
aot_eager (equal), batched CFG (close); a feature cache that cannot work is refused by name before any weight
is read (the ones that work, first-block included: tests/runtime/test_hunyuan15_cache.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.engine_config import CompileConfig  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402
from lightx2v.quant import QuantLinear  # noqa: E402
from tests.hunyuan15_fixtures import LATENT, write_hunyuan15  # noqa: E402

H = W = 32
F = 5
PROMPT = 'a sign reads "HI"'


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_hunyuan15(tmp_path_factory.mktemp("hy15e"))[0]


def _load(folder, **kw):
    return LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, **kw)


def _run(pipe, guidance=6.0):
    z = torch.randn(1, LATENT, 2, H // 16, W // 16, generator=torch.Generator().manual_seed(3))
    return pipe.generate(PROMPT, negative_prompt="blurry", height=H, width=W, num_frames=F, num_inference_steps=2,
                         guidance_scale=guidance, latents=z, output_type="latent").latents


@pytest.fixture(scope="module")
def plain_pipe(folder):
    return _load(folder)


@pytest.fixture(scope="module")
def plain(plain_pipe):
    return _run(plain_pipe)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_w8a8_int8_quantizes_the_declared_linears_and_stays_close(folder, plain):
    pipe = _load(folder, quant="w8a8-int8")
    q = [n for n, m in pipe.pipeline.dit.named_modules() if isinstance(m, QuantLinear)]
    assert q and all(n.startswith("double_blocks.") for n in q)
    assert len(q) == 2 * 2 * 7  # 2 blocks x (img, txt) x (q, k, v, proj, fc1, fc2, mod)
    got = _run(pipe)
    assert 0 < _rel(got, plain) < 0.05


def test_block_offload_gives_the_same_latents(folder, plain):
    pipe = _load(folder, offload="block")
    assert any("block" in line for line in pipe.pipeline.engine_log)
    assert torch.allclose(_run(pipe), plain, atol=1e-5, rtol=1e-5)


def test_compile_aot_eager_gives_the_same_latents(folder, plain_pipe):
    """One branch (guidance 1): each branch's text length is another graph, and tracing is the slow part."""
    pipe = _load(folder, compile=CompileConfig(enabled=True, backend="aot_eager"))
    assert any(line.startswith("compile") for line in pipe.pipeline.engine_log)
    assert torch.allclose(_run(pipe, 1.0), _run(plain_pipe, 1.0), atol=1e-4, rtol=1e-4)


def test_batched_cfg_matches_sequential(folder, plain):
    assert torch.allclose(_run(_load(folder, cfg_mode="batched")), plain, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method, match", [
    ("magcache", "magcache has no published ratios named 'hy15-t2v-480p'"),  # LightX2V publishes 480p I2V only
])
def test_the_feature_cache_is_refused_by_name(folder, method, match):
    with pytest.raises(InputError, match=match) as err:
        _load(folder, cache=method)
    assert err.value.field == "cache"


def test_encoder_offload_places_both_text_encoders_for_their_stage(folder, plain, monkeypatch):
    """With offload_encoders the Qwen2.5-VL and the byT5 encoders and the VAE live in host memory and each is
    on the device only for its stage (the same latents)."""
    from lightx2v.runtime.offload import ModelOffload

    pipe = _load(folder, offload="block", offload_encoders=True)
    assert sorted(pipe.pipeline.encoder_offload.models) == ["text_encoder", "text_encoder_2", "vae"]
    events = []
    activate = ModelOffload.activate
    monkeypatch.setattr(ModelOffload, "activate", lambda self, n: events.append(n) or activate(self, n))
    assert torch.equal(_run(pipe), plain)
    assert events[:2] == ["text_encoder", "text_encoder_2"]
