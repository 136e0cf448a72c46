"""Tiny Qwen-Image pieces for tests and offline demos: a Qwen2 tokenizer folder and a Qwen2.5-VL config.

`build_tiny_tokenizer(folder)` writes a real byte-level BPE tokenizer (transformers' Qwen2Tokenizer:
the 256 byte symbols, a few merges, and the chat special tokens `<|endoftext|>`, `<|im_start|>`,
`<|im_end|>`, and the vision tokens the edit templates use: `<|vision_start|>`, `<|vision_end|>`,
`<|image_pad|>`, `<|video_pad|>`), so that prompts in the chat template tokenize as the released
tokenizer splits them around the special tokens; `tiny_text_config()` is a Qwen2.5-VL of a few
thousand parameters whose vocabulary covers it, its image/video/vision token ids those of the tiny
tokenizer (`tiny_image_processor_config()`: a Qwen2-VL image processor that makes few vision tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TINY_VOCAB", "build_tiny_tokenizer", "tiny_image_processor_config", "tiny_text_config"]

# appended after the byte symbols and merges, so the ids of the first three do not move
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                  "<|video_pad|>")
_MERGES = (("Ġ", "a"), ("Ġ", "t"), ("e", "r"), ("i", "n"), ("o", "n"))
TINY_VOCAB = 288  # >= 256 bytes + merges + special tokens


def build_tiny_tokenizer(folder: str | Path) -> Path:
    """Write a tiny Qwen2 tokenizer into `folder` (save_pretrained's files); returns the folder."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in _MERGES:
        vocab[a + b] = len(vocab)
    for t in SPECIAL_TOKENS:
        vocab[t] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=list(_MERGES), additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    tok.save_pretrained(str(folder))
    return Path(folder)


def _token_id(name: str) -> int:
    """The tiny tokenizer's id of a special token (after the 256 bytes and the merges)."""
    return 256 + len(_MERGES) + SPECIAL_TOKENS.index(name)


def tiny_text_config(hidden_size: int = 32, layers: int = 2) -> Any:
    """A Qwen2_5_VLConfig with a tiny language model (4 heads of 8, 2 KV heads) and vision tower (one
    full-attention block of 2 heads of 8; patches 14, merged 2 x 2, as released)."""
    from transformers import Qwen2_5_VLConfig

    text = dict(vocab_size=TINY_VOCAB, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                bos_token_id=0, eos_token_id=0, pad_token_id=0,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden_size,
                  fullatt_block_indexes=[0])
    ids = {f"{k}_token_id": _token_id(f"<|{k}{'_pad' if k in ('image', 'video') else ''}|>")
           for k in ("image", "video", "vision_start", "vision_end")}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)


def tiny_image_processor_config(max_pixels: int = 28 * 28 * 12) -> dict:
    """A processor/preprocessor_config.json of the released kind (Qwen2VLImageProcessor: patches of 14,
    2 x 2 merged, 2 frames, CLIP mean/std, bicubic), with a small pixel budget (few vision tokens)."""
    return {
        "image_processor_type": "Qwen2VLImageProcessor", "do_resize": True, "do_rescale": True,
        "do_normalize": True, "do_convert_rgb": True, "rescale_factor": 1 / 255, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "min_pixels": 56 * 56, "max_pixels": max_pixels,
    }
