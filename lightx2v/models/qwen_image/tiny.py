"""Tiny Qwen-Image pieces for tests and offline demos: a Qwen2 tokenizer folder and a Qwen2.5-VL config.

`build_tiny_tokenizer(folder)` writes a real byte-level BPE tokenizer (transformers' Qwen2Tokenizer:
the 256 byte symbols, a few merges, and the chat special tokens `<|endoftext|>`, `<|im_start|>`,
`<|im_end|>`), so that prompts in the chat template tokenize as the released tokenizer splits them
around the special tokens; `tiny_text_config()` is a Qwen2.5-VL of a few thousand parameters whose
vocabulary covers it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TINY_VOCAB", "build_tiny_tokenizer", "tiny_text_config"]

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
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


def tiny_text_config(hidden_size: int = 32, layers: int = 2) -> Any:
    """A Qwen2_5_VLConfig with a tiny language model (4 heads of 8, 2 KV heads) and vision tower."""
    from transformers import Qwen2_5_VLConfig

    text = dict(vocab_size=TINY_VOCAB, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                bos_token_id=0, eos_token_id=0, pad_token_id=0,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden_size,
                  fullatt_block_indexes=[0])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision)
