"""Tiny random HunyuanVideo-1.5 T2V and I2V checkpoints in the diffusers layout, written by diffusers itself.

`write_hunyuan15(root)` -> (folder, reference pipeline): `HunyuanVideo15Pipeline(...).save_pretrained`
writes model_index.json, transformer/, vae/, text_encoder/ (the bare Qwen2.5-VL language model),
tokenizer/ (a byte-level Qwen2 tokenizer with the Qwen chat template), text_encoder_2/ (a byT5
T5EncoderModel), tokenizer_2/ (the real ByT5Tokenizer), scheduler/ (shift 5, the 480p release's) and
guider/ (guidance 6): the real file and key names, tiny sizes. The reference pipeline holds the same
weights, its crop_start set to this tokenizer's (diffusers hard-codes the released tokenizer's 108).

`write_hunyuan15_i2v(root)` -> (folder, reference HunyuanVideo15ImageToVideoPipeline): the same pieces
(`_parts`) plus image_encoder/ (a tiny SiglipVisionModel, 12 wide: the DiT's image_embed_dim) and
feature_extractor/ (a SiglipImageProcessor resizing to its 28 px square); its transformer's
target_size is 64, so the size diffusers picks from the image is tiny (64 x 64 for a square image).
"""

from __future__ import annotations

from pathlib import Path

import torch

# the Qwen2.5 chat format (the released template renders text-only turns exactly so)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LATENT = 4
DIT = dict(in_channels=2 * LATENT + 1, out_channels=LATENT, num_attention_heads=2, attention_head_dim=16, num_layers=2,
           num_refiner_layers=2, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=32, text_embed_2_dim=16,
           image_embed_dim=12, rope_axes_dim=(4, 6, 6), target_size=640, task_type="t2v")
SHIFT, GUIDANCE = 5.0, 6.0


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    from lightx2v.models.qwen_image.tiny import build_tiny_tokenizer

    build_tiny_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _parts(root: Path, seed: int, task_type: str, target_size: int = 640, latent: int = LATENT) -> dict:
    """The components both pipelines share, random and tiny (the keyword names of diffusers' pipelines);
    `latent`: the VAE's latent channels (32: the release's, which the tiny VAEs take)."""
    import diffusers
    import transformers

    from lightx2v.models.hunyuan15.vae_config import tiny_vae_config
    from lightx2v.models.wan.tiny import randomize_

    torch.manual_seed(seed)
    tok = _tokenizer(root / "_tok")
    llm = transformers.Qwen2_5_VLTextModel(transformers.Qwen2_5_VLTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048,
        rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})).eval()
    byt5_tok = transformers.ByT5Tokenizer()
    byt5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(byt5_tok), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2)).eval()
    dit = diffusers.HunyuanVideo15Transformer3DModel(**(DIT | {"task_type": task_type, "target_size": target_size,
                                                               "in_channels": 2 * latent + 1, "out_channels": latent})).eval()
    with torch.no_grad():
        for p in dit.parameters():  # diffusers zero-inits some layers: make every tensor count
            p.normal_(0, 0.2)
    vae = diffusers.AutoencoderKLHunyuanVideo15(**tiny_vae_config(latent_channels=latent).to_diffusers()).eval()
    with torch.no_grad():
        randomize_(vae, seed + 1)
    return dict(text_encoder=llm, tokenizer=tok, transformer=dit, vae=vae,
                scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT), text_encoder_2=byt5,
                tokenizer_2=byt5_tok, guider=diffusers.ClassifierFreeGuidance(guidance_scale=GUIDANCE))


def _save(ref, root: Path):
    from lightx2v.models.hunyuan15.text import crop_start_of

    folder = root / "model"
    ref.save_pretrained(str(folder))
    ref.prompt_template_encode_start_idx = crop_start_of(ref.tokenizer)
    return folder, ref


def write_hunyuan15(root: Path, seed: int = 0, latent: int = LATENT):
    import diffusers

    return _save(diffusers.HunyuanVideo15Pipeline(**_parts(root, seed, "t2v", latent=latent)), root)


SIGLIP_SIZE = 28  # pixels: 2 x 2 patches of 14 -> 4 image tokens
I2V_TARGET = 64   # the I2V transformer's target_size: the size the image picks stays tiny (about 64 x 64)


def write_hunyuan15_i2v(root: Path, seed: int = 0):
    import diffusers
    import transformers

    parts = _parts(root, seed, "i2v", I2V_TARGET)
    siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=DIT["image_embed_dim"], intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        image_size=SIGLIP_SIZE, patch_size=14)).eval()
    processor = transformers.SiglipImageProcessor(size={"height": SIGLIP_SIZE, "width": SIGLIP_SIZE})
    ref = diffusers.HunyuanVideo15ImageToVideoPipeline(**parts, image_encoder=siglip, feature_extractor=processor)
    return _save(ref, root)
