"""The Qwen-Image-2.1 text encoder: Qwen3-VL's language model, run as diffusers' QwenImage21Pipeline runs it.

Design: as for Qwen-Image (text.py), transformers runs the model (`Qwen3VLTextModel`, the decoder of
`Qwen3VLForConditionalGeneration`); `QwenTextEncoder21` holds it as `model` and the vision tower
(`Qwen3VLVisionModel`, for the image-conditioned mode: vision21.py) as `visual`, built on meta and
loaded by name (`text21_key_from_file`: `model.language_model.*` -> `model.*`, `model.visual.*` ->
`visual.*`); `lm_head` is not built.

What the reference does (QwenImage21Pipeline._get_qwen_prompt_embeds), reproduced by `encode_prompt21`:
  1. an empty prompt becomes " " (the tokenizer adds no BOS token: nothing would be left to read);
  2. the prompt goes into the raw template `T2I_TEMPLATE_21` (system line "Comprehend and analyze
     the provided prompt."), tokenized as is (not through apply_chat_template);
  3. the states are the last decoder layer's output *before* the final RMSNorm (what the DiT was
     trained on; diffusers hooks the norm out for the call). Here the norm is not built at all:
     `model.norm` is an identity and `model.language_model.norm.weight` is not read;
  4. the first `drop` tokens are dropped: the tokens of the system turn as the processor's chat
     template renders it ("<|im_start|>system\\n{system}<|im_end|>\\n"; `system_drop`).
One prompt per call (the reference encodes the prompt and the negative prompt in two calls, each a
batch of one): no padding, so positions are 0 .. L-1 on all three M-RoPE axes, as transformers gives
a text-only sequence, and the DiT needs no text mask.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightx2v.errors import CheckpointError

__all__ = ["SYSTEM_PROMPT_21", "T2I_TEMPLATE_21", "QwenTextEncoder21", "encode_prompt21", "system_drop",
           "text21_config_from_file", "text21_key_from_file"]

SYSTEM_PROMPT_21 = "Comprehend and analyze the provided prompt."
T2I_TEMPLATE_21 = (f"<|im_start|>system\n{SYSTEM_PROMPT_21}<|im_end|>\n<|im_start|>user\n{{}}<|im_end|>\n"
                   "<|im_start|>assistant\n")
SYSTEM_TURN_21 = f"<|im_start|>system\n{SYSTEM_PROMPT_21}<|im_end|>\n"


def text21_config_from_file(folder: str | Path) -> Any:
    """The Qwen3-VL config of a text_encoder/ folder; anything but a qwen3_vl model is refused by name."""
    from transformers import AutoConfig

    folder = Path(folder)
    try:
        cfg = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the text encoder config {folder / 'config.json'} ({exc})") from None
    if getattr(cfg, "model_type", None) != "qwen3_vl":
        raise CheckpointError(f"{folder / 'config.json'} is a {getattr(cfg, 'model_type', '?')} model; Qwen-Image-2.1's "
                              "text encoder is a qwen3_vl model (Qwen3VLForConditionalGeneration)")
    return cfg


def text21_key_from_file(key: str) -> str | None:
    """Our name for a text_encoder/ key: `model.language_model.*` -> `model.*`, `model.visual.*` ->
    `visual.*`; None (not read) for the LM head and the final norm (not run: see the module docstring)."""
    if key.startswith("model.language_model."):
        key = "model." + key[len("model.language_model."):]
    elif key.startswith("model.visual."):
        key = key[len("model."):]
    if key.startswith("lm_head.") or key == "model.norm.weight":
        return None
    return key


class QwenTextEncoder21(nn.Module):
    """forward(input_ids [1, L], **vision) -> the last decoder layer's states [1, L, hidden] (before the
    final norm). `vision` (the image-conditioned mode, vision21.py): inputs_embeds with the image
    features in place, position_ids [3, 1, L], visual_pos_masks, deepstack_visual_embeds."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel, Qwen3VLVisionModel

        text_config = copy.deepcopy(getattr(config, "text_config", config))
        text_config._attn_implementation = "sdpa"  # what from_pretrained picks in the reference
        self.model = Qwen3VLTextModel(text_config)
        self.model.norm = nn.Identity()  # the DiT reads the pre-norm states
        self.image_token_id = getattr(config, "image_token_id", None)
        self.visual = None
        if getattr(config, "vision_config", None) is not None:
            vision_config = copy.deepcopy(config.vision_config)
            vision_config._attn_implementation = "sdpa"
            self.visual = Qwen3VLVisionModel(vision_config)
        self.register_load_state_dict_post_hook(_rebuild_rope)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, **vision: Any) -> torch.Tensor:
        mask = torch.ones_like(input_ids)
        if vision:
            return self.model(attention_mask=mask, use_cache=False, **vision).last_hidden_state
        return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state


def _rebuild_rope(module: QwenTextEncoder21, incompatible_keys: Any) -> None:
    """After load_state_dict: the RoPE table (`inv_freq`, a non-persistent buffer) left on the meta
    device by a meta build is computed again from the config, in float32, where the weights are."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if module.visual is not None and module.visual.rotary_pos_emb.inv_freq.is_meta:
        vrope = module.visual.rotary_pos_emb
        with torch.device("cpu"):
            inv_freq, vrope.attention_scaling = vrope.compute_axial_rope_parameters(vrope.config)
        vrope.inv_freq = inv_freq.float().to(module.visual.pos_embed.weight.device)
        vrope.original_inv_freq = vrope.inv_freq.clone()
    rope = module.model.rotary_emb
    if not rope.inv_freq.is_meta:
        return
    init = rope.compute_default_rope_parameters if rope.rope_type == "default" else ROPE_INIT_FUNCTIONS[rope.rope_type]
    with torch.device("cpu"):
        inv_freq, rope.attention_scaling = init(rope.config)
    rope.inv_freq = inv_freq.float().to(module.model.embed_tokens.weight.device)
    rope.original_inv_freq = rope.inv_freq.clone()


def system_drop(tokenizer: Any) -> int:
    """How many leading tokens the reference drops: the system turn's (see the module docstring)."""
    return len(tokenizer(SYSTEM_TURN_21).input_ids)


@torch.no_grad()
def encode_prompt21(encoder: QwenTextEncoder21, tokenizer: Any, prompt: str) -> torch.Tensor:
    """The prompt's states [1, L, hidden] in the encoder's dtype (the template's system turn dropped)."""
    device = encoder.model.embed_tokens.weight.device
    ids = tokenizer([T2I_TEMPLATE_21.format(prompt or " ")], return_tensors="pt").input_ids.to(device)
    return encoder(ids)[:, system_drop(tokenizer):]
