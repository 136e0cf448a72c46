"""Random-weight diffusers folders of HunyuanVideo-1.5 480P T2V and Qwen-Image at full size (or tiny), for
benchmarks/e2e_family.py.

Each model is built by diffusers / transformers themselves in bf16 directly on the device (a GPU draws
57 GB of random numbers in seconds; random_weights.fill_random_ scales them so activations stay finite),
then the whole pipeline is written with `save_pretrained` (model_index.json, the released component
folders and file names, bf16 safetensors in 5 GB shards): the layout both our loader and diffusers'
`from_pretrained` read. Full size:

  HunyuanVideo-1.5 480P T2V: HunyuanVideo15Transformer3DModel (8.3B: 54 blocks of 2048, task t2v, target
    640), AutoencoderKLHunyuanVideo15 (its defaults are the release's), text_encoder: Qwen2_5_VLTextModel
    at Qwen2.5-VL-7B's language-model sizes (28 layers of 3584, 28 heads, 4 KV heads, FFN 18944, vocabulary
    152064), text_encoder_2: byT5-small's encoder (12 layers of 1472, FFN 3584, 6 heads; vocabulary 384:
    the release's glyph tokens are not added), FlowMatchEulerDiscreteScheduler(shift 5), guider 6.
  Qwen-Image: QwenImageTransformer2DModel (20B: 60 blocks of 3072), AutoencoderKLQwenImage (the
    release's), Qwen2_5_VLForConditionalGeneration at Qwen2.5-VL-7B's sizes (the language model as
    above, the 32-block vision tower), the release's scheduler config.

What is not the release's: the tokenizers. No tokenizer files can be fetched here, so both folders hold
lightx2v's tiny byte-level Qwen2 tokenizer (lightx2v.models.qwen_image.tiny: the 256 bytes, a few merges,
the chat special tokens; its ids fit the full 152064-row embedding) and transformers' own ByT5Tokenizer.
A prompt therefore tokenizes to about one token per character: the chat templates' system turns become
a few hundred tokens instead of ~100, so the text encoder sees longer sequences than with the real
tokenizer (it is well under a second of a run either way; the DiT's text length is the same padded
length for HunyuanVideo-1.5, and for Qwen-Image a few hundred tokens beside 6,889 image tokens).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from random_weights import fill_random_  # noqa: E402

# Qwen2.5-VL-7B-Instruct's config.json (the language model and the vision tower)
QWEN25VL_7B_TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                        rms_norm_eps=1e-6, rope_theta=1e6, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                        bos_token_id=151643, eos_token_id=151645)
QWEN25VL_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                          fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14, spatial_merge_size=2,
                          temporal_patch_size=2, tokens_per_second=2)
QWEN25VL_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                    vision_end_token_id=151653)
# google/byt5-small's encoder (HunyuanVideo-1.5's glyph encoder, Glyph-SDXL-v2)
BYT5_SMALL = dict(d_model=1472, d_kv=64, d_ff=3584, num_layers=12, num_heads=6, feed_forward_proj="gated-gelu",
                  is_encoder_decoder=False, tie_word_embeddings=False)
# Qwen/Qwen-Image scheduler/scheduler_config.json
QWEN_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9,
                      num_train_timesteps=1000, shift=1.0, shift_terminal=0.02, time_shift_type="exponential",
                      use_dynamic_shifting=True)
HY_SHIFT, HY_GUIDANCE = 5.0, 6.0  # the 480p T2V release's scheduler and guider

# tiny sizes (the tests' fixtures': tests/hunyuan15_fixtures.py, tests/qwen_image_fixtures.py)
HY_TINY_DIT = dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                   num_refiner_layers=2, mlp_ratio=2.0, text_embed_dim=32, text_embed_2_dim=16, image_embed_dim=12,
                   rope_axes_dim=(4, 6, 6))
QWEN_TINY_DIT = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 6, 6])
QWEN_TINY_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
                     latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0])
# the Qwen2.5 chat format for the HunyuanVideo-1.5 tokenizer (the released template renders text turns so)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    from lightx2v.models.qwen_image.tiny import build_tiny_tokenizer

    build_tiny_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _made(device: str, fn):
    """`fn()` built in bf16 directly on `device` (no fp32 copy of 20B weights), random weights drawn there."""
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(device):
            m = fn()
    finally:
        torch.set_default_dtype(default)
    return fill_random_(m.to(torch.bfloat16), device).eval()


def hunyuan15_parts(root: Path, tiny: bool, device: str) -> tuple[str, dict]:
    import diffusers
    import transformers

    from lightx2v.models.hunyuan15.vae_config import tiny_vae_config

    tok = _tokenizer(root / "_tok")
    text = (dict(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048,
                 rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}) if tiny else QWEN25VL_7B_TEXT)
    byt5_tok = transformers.ByT5Tokenizer()
    byt5 = (dict(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2) if tiny else BYT5_SMALL)
    dit = (HY_TINY_DIT if tiny else {}) | {"task_type": "t2v", "target_size": 640}
    vae = tiny_vae_config(latent_channels=4).to_diffusers() if tiny else {}
    return "HunyuanVideo15Pipeline", dict(
        text_encoder=_made(device, lambda: transformers.Qwen2_5_VLTextModel(transformers.Qwen2_5_VLTextConfig(**text))),
        tokenizer=tok,
        transformer=_made(device, lambda: diffusers.HunyuanVideo15Transformer3DModel(**dit)),
        vae=_made(device, lambda: diffusers.AutoencoderKLHunyuanVideo15(**vae)),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=HY_SHIFT),
        text_encoder_2=_made(device, lambda: transformers.T5EncoderModel(
            transformers.T5Config(vocab_size=len(byt5_tok), **byt5))),
        tokenizer_2=byt5_tok, guider=diffusers.ClassifierFreeGuidance(guidance_scale=HY_GUIDANCE))


def qwen_image_parts(root: Path, tiny: bool, device: str) -> tuple[str, dict]:
    import diffusers
    import transformers

    from lightx2v.models.qwen_image.tiny import tiny_text_config

    tok = _tokenizer(root / "_tok")
    tok.chat_template = None  # Qwen-Image's pipeline writes its template itself
    cfg = (tiny_text_config() if tiny else transformers.Qwen2_5_VLConfig(
        text_config=QWEN25VL_7B_TEXT, vision_config=QWEN25VL_7B_VISION, **QWEN25VL_IDS))
    return "QwenImagePipeline", dict(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER),
        vae=_made(device, lambda: diffusers.AutoencoderKLQwenImage(**(QWEN_TINY_VAE if tiny else {}))),
        text_encoder=_made(device, lambda: transformers.Qwen2_5_VLForConditionalGeneration(cfg)),
        tokenizer=tok,
        transformer=_made(device, lambda: diffusers.QwenImageTransformer2DModel(**(QWEN_TINY_DIT if tiny else {}))))


WRITERS = {"hunyuan15": hunyuan15_parts, "qwen-image": qwen_image_parts}


def write_folder(family: str, root: Path, tiny: bool, device: str) -> dict:
    """Write `family`'s diffusers folder to `root`/model; returns {"build_s", "save_s", "bytes"}."""
    import shutil

    import diffusers

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        cls, parts = WRITERS[family](root, tiny, device)
    if device == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    pipe = getattr(diffusers, cls)(**parts)
    pipe.save_pretrained(str(root / "model"), safe_serialization=True, max_shard_size="5GB")
    shutil.rmtree(root / "_tok", ignore_errors=True)
    size = sum(p.stat().st_size for p in (root / "model").rglob("*") if p.is_file())
    return {"build_s": round(t1 - t0, 2), "save_s": round(time.perf_counter() - t1, 2), "bytes": size}
