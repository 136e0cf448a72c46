"""A tiny random HunyuanVideo-1.5 T2V checkpoint in the diffusers layout, written by diffusers itself.

`write_hunyuan15(root)` -> (folder, reference pipeline): `HunyuanVideo15Pipeline(...).save_pretrained`
writes model_index.json, transformer/, vae/, text_encoder/ (the bare Qwen2.5-VL language model),
tokenizer/ (a byte-level Qwen2 tokenizer with the Qwen chat template), text_encoder_2/ (a byT5
T5EncoderModel), tokenizer_2/ (the real ByT5Tokenizer), scheduler/ (shift 5, the 480p release's) and
guider/ (guidance 6): the real file and key names, tiny sizes. The reference pipeline holds the same
weights, its crop_start set to this tokenizer's (diffusers hard-codes the released tokenizer's 108).
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


def write_hunyuan15(root: Path, seed: int = 0):
    import diffusers
    import transformers

    from lightx2v.models.hunyuan15.text import crop_start_of
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
    dit = diffusers.HunyuanVideo15Transformer3DModel(**DIT).eval()
    with torch.no_grad():
        for p in dit.parameters():  # diffusers zero-inits some layers: make every tensor count
            p.normal_(0, 0.2)
    vae = diffusers.AutoencoderKLHunyuanVideo15(**tiny_vae_config(latent_channels=LATENT).to_diffusers()).eval()
    with torch.no_grad():
        randomize_(vae, seed + 1)
    ref = diffusers.HunyuanVideo15Pipeline(
        text_encoder=llm, tokenizer=tok, transformer=dit, vae=vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT), text_encoder_2=byt5, tokenizer_2=byt5_tok,
        guider=diffusers.ClassifierFreeGuidance(guidance_scale=GUIDANCE))
    folder = root / "model"
    ref.save_pretrained(str(folder))
    ref.prompt_template_encode_start_idx = crop_start_of(tok)
    return folder, ref
