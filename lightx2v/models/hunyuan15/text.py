"""HunyuanVideo-1.5's text conditioning: the Qwen2.5-VL-7B language model's prompt states and the byT5
glyph states of quoted text, as the reference pipelines build them.

Design: glue around encoders we do not own (transformers' `Qwen2_5_VLTextModel` / `T5EncoderModel` and
their tokenizers, passed in), written once for both layouts; the facts come from the official
hyvideo/models/text_encoders (TextEncoder, PROMPT_TEMPLATE "li-dit-encode-video-json") and
hunyuan_video_pipeline.py, and diffusers' HunyuanVideo15Pipeline.encode_prompt, which agree:

* Language model. The prompt is the user turn of a chat whose system turn asks for a detailed video
  description (`SYSTEM_MESSAGE`; an empty prompt becomes " "), rendered by the tokenizer's chat
  template with the assistant prompt appended, right-padded / truncated to `crop_start + text_len`
  tokens (text_len 1000). The states taken are `hidden_states[-(skip + 1)]` (skip 2: the output of
  the third-to-last decoder layer, no final norm), and the first `crop_start` tokens (the system
  turn and "<|im_start|>user\\n") are dropped from the states and the mask: [B, 1000, 3584]. The
  trailing "<|im_end|>\\n<|im_start|>assistant\\n" tokens stay, inside the mask. crop_start is 108
  for the released tokenizer (diffusers' constant); the official code finds it by searching the
  rendered template for "<|im_start|>user\\n" (`crop_start_of`, which gives it for any tokenizer).
* Glyphs. Text in double quotes ("..." or “...”) is extracted (duplicates dropped when there are
  several), formatted as `Text "a". Text "b". ` and tokenized by the byT5 tokenizer (special tokens
  added, padded / truncated to 256); the byT5 encoder's last states, with that mask, are the glyph
  states [B, 256, 1472]. A prompt with no quoted text gets zeros and an all-zero mask.
  The official pipeline encodes the negative branch's glyphs from "" (zeros) whatever the negative
  prompt; diffusers encodes the negative prompt's quoted text. `encode_prompt(glyph=False)` gives
  the former.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from lightx2v.errors import CheckpointError

__all__ = [
    "CROP_START", "GLYPH_LEN", "HIDDEN_LAYERS_SKIPPED", "SYSTEM_MESSAGE", "TEXT_LEN", "TextConditioning",
    "crop_start_of", "encode_glyphs", "encode_prompt", "encode_text", "glyph_prompt", "glyph_texts",
]

# The system turn of the official "li-dit-encode-video-json" template (= diffusers' system_message),
# character for character: the runs of spaces are the reference source's line-continuation indents.
SYSTEM_MESSAGE = (
    "You are a helpful assistant. Describe the video by detailing the following aspects:"
    "         1. The main content and theme of the video."
    "         2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "         3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "         4. background environment, light, style and atmosphere."
    "         5. camera angles, movements, and transitions used in the video."
)
CROP_START = 108           # template tokens before the prompt, released Qwen2.5-VL tokenizer
TEXT_LEN = 1000            # prompt tokens kept after the template (official max_length)
HIDDEN_LAYERS_SKIPPED = 2  # official hidden_state_skip_layer: hidden_states[-3]
GLYPH_LEN = 256            # byT5 tokens (official byt5_max_length)
USER_MARKER = "<|im_start|>user\n"

_QUOTED = re.compile(r"\"(.*?)\"|“(.*?)”")


@dataclass(frozen=True)
class TextConditioning:
    """What the DiT reads of a batch of prompts (masks: int64, 1 = a real token)."""

    text: torch.Tensor        # [B, text_len, D_llm]
    text_mask: torch.Tensor   # [B, text_len]
    glyph: torch.Tensor       # [B, glyph_len, D_byt5]
    glyph_mask: torch.Tensor  # [B, glyph_len]


def _chat(prompt: str, system: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt if prompt else " "}]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def crop_start_of(tokenizer: Any, system: str = SYSTEM_MESSAGE) -> int:
    """The number of template tokens before the prompt, found as the official TextEncoder does: the
    position just after the first "<|im_start|>user\\n" in the rendered template."""
    ids = tokenizer.apply_chat_template([_chat("a photo of a cat", system)], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"][0]
    ids = list(ids)
    marker = tokenizer(USER_MARKER, add_special_tokens=False)["input_ids"]
    for i in range(len(ids) - len(marker) + 1):
        if ids[i : i + len(marker)] == marker:
            return i + len(marker)
    raise CheckpointError(f"the text tokenizer's chat template renders no {USER_MARKER!r}; expected the "
                          "Qwen2.5-VL tokenizer (its chat template)")


@torch.no_grad()
def encode_text(model: nn.Module, tokenizer: Any, prompts: Sequence[str], *, text_len: int = TEXT_LEN,
                crop_start: int = CROP_START, skip: int = HIDDEN_LAYERS_SKIPPED,
                system: str = SYSTEM_MESSAGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt states [B, text_len, D] (the model's dtype) and mask [B, text_len] (int64) of the
    language model (`Qwen2_5_VLTextModel`), as the module docstring describes."""
    tokens = tokenizer.apply_chat_template(
        [_chat(p, system) for p in prompts], add_generation_prompt=True, tokenize=True, return_dict=True,
        padding="max_length", max_length=text_len + crop_start, truncation=True, return_tensors="pt",
        padding_side="right",
    )
    device = _device(model)
    ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
    states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-(skip + 1)]
    return states[:, crop_start:], mask[:, crop_start:].long()


def glyph_texts(prompt: str) -> list[str]:
    """The texts in double quotes ("..." or “...”), in order; duplicates dropped when there are several."""
    found = [a or b for a, b in _QUOTED.findall(prompt)]
    return list(dict.fromkeys(found)) if len(found) > 1 else found


def glyph_prompt(prompt: str) -> str | None:
    """The byT5 input for a prompt's quoted texts (`Text "a". Text "b". `); None when there are none."""
    texts = glyph_texts(prompt)
    return "".join(f'Text "{t}". ' for t in texts) if texts else None


@torch.no_grad()
def encode_glyphs(model: nn.Module, tokenizer: Any, prompts: Sequence[str], *,
                  glyph_len: int = GLYPH_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Glyph states [B, glyph_len, D] (the model's dtype) and mask [B, glyph_len] (int64) of the byT5
    encoder (`T5EncoderModel`); zeros for a prompt with no quoted text. The prompts with glyphs run
    as one batch (each is padded to glyph_len anyway)."""
    device, dtype = _device(model), next(model.parameters()).dtype
    width = model.config.d_model
    states = torch.zeros(len(prompts), glyph_len, width, device=device, dtype=dtype)
    mask = torch.zeros(len(prompts), glyph_len, device=device, dtype=torch.long)
    rows = [(i, g) for i, p in enumerate(prompts) if (g := glyph_prompt(p)) is not None]
    if rows:
        tokens = tokenizer([g for _, g in rows], padding="max_length", max_length=glyph_len, truncation=True,
                           add_special_tokens=True, return_tensors="pt")
        ids, m = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        index = torch.tensor([i for i, _ in rows], device=device)
        states[index] = model(input_ids=ids, attention_mask=m.float())[0].to(dtype)
        mask[index] = m.long()
    return states, mask


def encode_prompt(llm: nn.Module, llm_tokenizer: Any, byt5: nn.Module, byt5_tokenizer: Any,
                  prompts: str | Sequence[str], *, glyph: bool = True, text_len: int = TEXT_LEN,
                  crop_start: int = CROP_START, glyph_len: int = GLYPH_LEN,
                  system: str = SYSTEM_MESSAGE) -> TextConditioning:
    """Both encoders' states for `prompts`. `glyph=False`: zero glyph states (the official negative branch)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    text, text_mask = encode_text(llm, llm_tokenizer, prompts, text_len=text_len, crop_start=crop_start,
                                  system=system)
    g, g_mask = encode_glyphs(byt5, byt5_tokenizer, prompts if glyph else [""] * len(prompts), glyph_len=glyph_len)
    return TextConditioning(text, text_mask, g, g_mask)
