"""The text and image encoders quantized with the DiT's schemes (EngineConfig.quant_text_encoder /
quant_image_encoder): only the declared block linears; the rest (embeddings, norms, position bias)
stays float; the output stays within the scheme's error of the float encoder."""

from __future__ import annotations

import types

import pytest
import torch

from lightx2v import LightX2V
from lightx2v.config import EngineConfig
from lightx2v.models.wan.clip import CLIPVisionConfig, WanCLIPVision
from lightx2v.models.wan.tiny import randomize_
from lightx2v.quant import QuantLinear
from lightx2v.runtime.engine import quantize_encoders


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("scheme", ["w8a8-int8", "w8a16-fp8"])
def test_text_encoder_quantized_through_from_pretrained(tiny_official_dir, scheme):
    load = (lambda **kw: LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32,
                                                  progress=False, **kw))
    plain, quant = load(), load(quant_text_encoder=scheme)
    t5 = quant.pipeline.text_encoder
    layers = {n for n, m in t5.named_modules() if isinstance(m, QuantLinear)}
    n_blocks = len(t5.blocks)
    assert len(layers) == 7 * n_blocks  # q, k, v, o, gate.0, fc1, fc2 per block
    assert f"quant: text_encoder: {7 * n_blocks} layers ({scheme})" in quant.pipeline.engine_log
    assert isinstance(t5.token_embedding, torch.nn.Embedding) and t5.token_embedding.weight.dtype == torch.float32
    assert not any(isinstance(m, QuantLinear) for m in plain.pipeline.dit.modules())  # the DiT is not touched
    prompts = ["a fox in the snow", "a red panda drinking tea"]
    want, got = plain.pipeline.encode_prompt(prompts), quant.pipeline.encode_prompt(prompts)
    # e4m3 keeps 3 mantissa bits: on this 32-wide random encoder its error is ~0.12 (a wrong scale: ~1)
    assert 1e-4 < _rel(got, want) < (5e-2 if "int8" in scheme else 0.2)


def test_image_encoder_quantized_by_the_engine_step():
    cfg = CLIPVisionConfig(image_size=28, patch_size=14, dim=32, ffn_dim=64, num_heads=2, num_layers=3)
    clip = randomize_(WanCLIPVision(cfg), seed=2).eval()
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        want = clip(pixels)
    spec = types.SimpleNamespace(component=lambda name: types.SimpleNamespace(dtype=lambda dt: torch.float32))
    pipe = types.SimpleNamespace(components={"clip": clip, "text_encoder": None}, transformer_names=("dit",),
                                 model_config=types.SimpleNamespace(spec=spec))
    log = quantize_encoders(pipe, EngineConfig(device="cpu", dtype=torch.float32, quant_image_encoder="w8a8-int8"))
    assert log == ["clip: 12 layers (w8a8-int8)"]  # to_qkv, proj, mlp.0, mlp.2 in each of the 3 blocks
    assert isinstance(clip.patch_embedding, torch.nn.Conv2d) and clip.pos_embedding.dtype == torch.float32
    with torch.no_grad():
        got = clip(pixels)
    assert 1e-4 < _rel(got, want) < 5e-2
