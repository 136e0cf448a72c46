"""vae_dtype: the VAE in bf16 (opt-in) decodes close to the fp32 default; the default stays fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightx2v import LightX2V
from lightx2v.config import EngineConfig
from lightx2v.errors import InputError

KW = dict(prompt="a red fox in the snow", height=32, width=48, num_frames=5, num_inference_steps=2, seed=3,
          output_type="np")


def test_bf16_vae_decodes_close_to_fp32(tiny_official_dir):
    ref = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype="fp32", progress=False)
    assert next(ref.pipeline.vae.parameters()).dtype == torch.float32 and ref.pipeline.vae_dtype == torch.float32
    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype="fp32", vae_dtype="bf16", progress=False)
    assert next(pipe.pipeline.vae.parameters()).dtype == torch.bfloat16 and pipe.pipeline.vae_dtype == torch.bfloat16
    a, b = ref.generate(**KW), pipe.generate(**KW)
    torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=0)  # the DiT path is untouched
    err = np.linalg.norm(b.frames - a.frames) / np.linalg.norm(a.frames)
    assert 0 < err < 3e-2, err


def test_vae_dtype_names_are_checked():
    assert EngineConfig(device="cpu", vae_dtype="bf16").vae_dtype == torch.bfloat16
    with pytest.raises(InputError, match="unknown dtype 'int8'"):
        EngineConfig(device="cpu", vae_dtype="int8")
