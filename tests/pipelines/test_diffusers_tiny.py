"""diffusers' own tiny Wan T2V pipeline configuration (rope_max_seq_len 32, a base_dim-3 VAE with
dim_mult [1, 1, 1, 1] and one res block), saved by diffusers and loaded through our detection and
loaders, against diffusers' WanPipeline on the same weights and noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightx2v import LightX2V
from lightx2v.models.wan.tiny import randomize_
from tests.conftest import TEXT_DIM
from tests.models.test_wan_configs import DIFFUSERS_T2V, DIFFUSERS_VAE


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    from lightx2v.models.wan.tokenizer import build_tiny_tokenizer

    root = tmp_path_factory.mktemp("diffusers-own-tiny")
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_tokenizer(root / "_tok"))
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_heads=4,
                                     num_layers=2, relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
                                     dense_act_fn="gelu_new", is_encoder_decoder=False, tie_word_embeddings=False))
    dit = WanTransformer3DModel(**{**DIFFUSERS_T2V, "text_dim": TEXT_DIM})
    vae = AutoencoderKLWan(**DIFFUSERS_VAE)
    for i, m in enumerate((t5, dit, vae)):
        randomize_(m, seed=20 + i)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    num_train_timesteps=1000, flow_shift=3.0)
    WanPipeline(tokenizer=tokenizer, text_encoder=t5.eval(), transformer=dit.eval(), vae=vae.eval(),
                scheduler=sched).save_pretrained(root / "model")
    return root / "model"


def test_diffusers_own_tiny_config_matches_wan_pipeline(tiny_folder):
    from diffusers import WanPipeline

    assert DIFFUSERS_T2V["rope_max_seq_len"] == 32 and DIFFUSERS_VAE["num_res_blocks"] == 1
    latents = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    kw = dict(prompt="a small dog", negative_prompt="blur", height=32, width=32, num_frames=9,
              num_inference_steps=2, guidance_scale=4.0, output_type="np")
    ref = WanPipeline.from_pretrained(tiny_folder, dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    expected = np.asarray(ref(latents=latents.clone(), **kw).frames[0], dtype=np.float32)
    pipe = LightX2V.from_pretrained(tiny_folder, device="cpu", dtype=torch.float32, progress=False)
    assert pipe.model_config.dit.rope_max_seq_len == 32 and pipe.model_config.arch.vae.num_res_blocks == 1
    ours = pipe.generate(latents=latents.clone(), **kw).frames
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=0)
