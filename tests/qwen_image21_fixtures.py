"""A tiny random Qwen-Image-2.1 folder, written by diffusers in the released layout.

`write_qwen_image21(root, turbo=False)` -> (model_dir, reference): diffusers' `QwenImage21Pipeline.save_pretrained`
(model_index.json, transformer/, text_encoder/, processor/, vae/, scheduler/) of a 2-block 2.1 DiT, the
2.1 VAE at base_dim 4 (16x, 4 stages), a Qwen3-VL of a few thousand parameters and a Qwen3-VL processor
on the tiny byte-level tokenizer (lightx2v.models.qwen_image.tiny), random weights (norm weights near 1,
the zero-centred text norm near 0); `reference` is that pipeline, the oracle on the same weights.
`turbo=True` also stores `sample_sigmas` in model_index.json (what marks the Turbo checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

DIT21 = dict(in_channels=8, out_channels=8, num_layers=2, attention_head_dim=16, num_attention_heads=2,
             context_in_dim=32, mlp_ratio=3, axes_dims_rope=[4, 6, 6])
VAE21 = dict(base_dim=4, decoder_base_dim=6, z_dim=8, dim_mult=[1, 2, 2, 2, 2], num_res_blocks=1,
             temperal_downsample=[False, True, True, True],
             latents_mean=[0.1 * i - 0.3 for i in range(8)], latents_std=[1.0 + 0.1 * i for i in range(8)])
# the released scheduler's kind: dynamic shift (values of the Qwen-Image config; 2.1's own are not known here)
SCHEDULER21 = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9,
                   num_train_timesteps=1000, shift=1.0, time_shift_type="exponential", use_dynamic_shifting=True)
TURBO_SIGMAS = [1.0, 0.8, 0.4]
# the system branch of Qwen3-VL's chat template (what the reference's drop count is computed with)
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
                 "{% else %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_qwen3_vl_config(hidden_size: int = 32):
    from transformers import Qwen3VLConfig

    from lightx2v.models.qwen_image.tiny import TINY_VOCAB, _token_id

    text = dict(vocab_size=TINY_VOCAB, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True,
                                 "rope_theta": 10000.0})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden_size,
                  num_position_embeddings=64, deepstack_visual_indexes=[0])
    ids = {f"{k}_token_id": _token_id(f"<|{k}{'_pad' if k in ('image', 'video') else ''}|>")
           for k in ("image", "video", "vision_start", "vision_end")}
    return Qwen3VLConfig(text_config=text, vision_config=vision, **ids)


def randomize21(module, scale=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("text_norm.weight"):
                p.copy_(0.2 * noise)  # zero-centred: the scale is weight + 1
            elif name.endswith(("gamma", "norm.weight", "norm_q.weight", "norm_k.weight", "layernorm.weight")):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(noise * scale)


def write_qwen_image21(root: Path, turbo: bool = False):
    """(model_dir, diffusers QwenImage21Pipeline) of a tiny random Qwen-Image-2.1 written under `root`."""
    from diffusers import (
        AutoencoderKLQwenImage21, FlowMatchEulerDiscreteScheduler, QwenImage21Pipeline, QwenImage21Transformer2DModel,
    )
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    from lightx2v.models.qwen_image.tiny import build_tiny_tokenizer

    torch.manual_seed(0)
    dit = QwenImage21Transformer2DModel(**DIT21).eval()
    randomize21(dit, 0.3, 1)
    vae = AutoencoderKLQwenImage21(**VAE21).eval()
    randomize21(vae, 0.2, 2)
    te = Qwen3VLForConditionalGeneration(tiny_qwen3_vl_config()).eval()
    randomize21(te, 0.2, 3)
    build_tiny_tokenizer(root / "_tok")
    tok = AutoTokenizer.from_pretrained(str(root / "_tok"))
    proc = Qwen3VLProcessorNoVideo(image_processor=tiny_image_processor21(), tokenizer=tok, chat_template=CHAT_TEMPLATE)
    ref = QwenImage21Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER21), vae=vae, text_encoder=te,
                              processor=proc, transformer=dit, sample_sigmas=TURBO_SIGMAS if turbo else None)
    folder = root / ("turbo" if turbo else "model")
    ref.register_modules(processor=None)  # saved by hand below
    ref.save_pretrained(str(folder))
    ref.register_modules(processor=proc)
    index = json.loads((folder / "model_index.json").read_text())
    index["processor"] = ["transformers", "Qwen3VLProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index))
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(folder / "processor"))
    proc.image_processor.save_pretrained(str(folder / "processor"))
    return folder, ref


def tiny_image_processor21():
    """Qwen3-VL's image processor kind (patches of 16, merged 2 x 2), transformers' PIL backend (no
    torchvision here), with a pixel budget that never resizes the reference's 32-multiple images."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5, 0.5, 0.5],
                                    image_std=[0.5, 0.5, 0.5], size={"shortest_edge": 32 * 32, "longest_edge": 2048 * 2048})


def _no_video_processor():
    from transformers import Qwen3VLProcessor

    class NoVideo(Qwen3VLProcessor):
        """transformers' Qwen3VLProcessor without its video processor (which needs torchvision, absent
        here): the reference's prompt and image processing are the real processor's code."""

        def check_argument_for_proper_class(self, name, arg):
            if name == "video_processor" and arg is None:
                return None
            return super().check_argument_for_proper_class(name, arg)

    return NoVideo


def Qwen3VLProcessorNoVideo(**kw):
    return _no_video_processor()(video_processor=None, **kw)
