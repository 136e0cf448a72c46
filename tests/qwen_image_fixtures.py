"""A tiny random Qwen-Image text-to-image folder, written by diffusers in the released layout.

`write_qwen_image(root)` -> (model_dir, reference): diffusers' `QwenImagePipeline.save_pretrained`
(model_index.json, transformer/, text_encoder/, tokenizer/, vae/, scheduler/) of a 2-block MMDiT, the
Qwen-Image VAE at base_dim 8 and a Qwen2.5-VL of a few thousand parameters, random weights (norm
weights near 1); `reference` is that pipeline, the oracle on the same weights. Shared through the
session fixture `qwen_image_t2i` (tests/conftest.py) by the pipeline, CLI, server and engine tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

DIT = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
           joint_attention_dim=32, axes_dims_rope=[4, 6, 6])
VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0])
# Qwen/Qwen-Image's scheduler_config.json
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, num_train_timesteps=1000,
                 shift=1.0, shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)


def randomize(module, scale=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if name.endswith(("gamma", "norm.weight")) else noise * scale)


def write_qwen_image(root: Path):
    """(model_dir, diffusers QwenImagePipeline) of a tiny random Qwen-Image written under `root`."""
    from diffusers import (
        AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel,
    )
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from lightx2v.models.qwen_image.tiny import build_tiny_tokenizer, tiny_text_config

    torch.manual_seed(0)
    dit = QwenImageTransformer2DModel(**DIT).eval()
    randomize(dit, 0.3, 1)
    vae = AutoencoderKLQwenImage(**VAE).eval()
    randomize(vae, 0.2, 2)
    te = Qwen2_5_VLForConditionalGeneration(tiny_text_config()).eval()
    randomize(te, 0.2, 3)
    build_tiny_tokenizer(root / "_tok")
    ref = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=te,
                            tokenizer=AutoTokenizer.from_pretrained(str(root / "_tok")), transformer=dit)
    ref.save_pretrained(str(root / "model"))
    return root / "model", ref
