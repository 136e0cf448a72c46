"""The Qwen-Image text encoder: Qwen2.5-VL-7B's language model, run as diffusers' QwenImagePipeline runs it.

Design: we do not own Qwen2.5-VL; transformers runs it (`Qwen2_5_VLTextModel`, the decoder stack of
`Qwen2_5_VLForConditionalGeneration`). `QwenTextEncoder` wraps it under the name `model`, so its
parameter names are the released text_encoder/ keys (`model.embed_tokens.weight`,
`model.layers.{i}.self_attn.q_proj.weight`, `model.norm.weight`: the layout transformers writes too) and
it builds on the meta device and loads by name like our own modules. Text-to-image reads no image, so
the vision tower (`visual.*`) and the unused `lm_head` are not built; `text_key_from_file` drops their
keys (and maps transformers' in-memory names, `model.language_model.*`, should a file use them). The
edit models' encoder sees the input images: `QwenTextEncoder(config, vision=True)` also builds
transformers' vision tower under the file's name `visual` (`text_key_with_vision` keeps its keys);
its forward then takes the processor's pixel values and the M-RoPE positions (vision.py).

What the reference does with it (diffusers' `QwenImagePipeline._get_qwen_prompt_embeds` and
`encode_prompt`), reproduced by `encode_prompts`:
  1. each prompt is put in the chat template (`T2I_TEMPLATE`: a system line asking to describe the image);
  2. tokenized as a batch: padded, truncated to 1024 + drop tokens;
  3. the decoder's last hidden state (after its final norm), with the attention mask;
  4. per prompt: its unpadded tokens, minus the first `drop` (34: the template's system part), then
     zero-padded to the batch's longest, with a mask of ones over the real tokens;
  5. cut to `max_sequence_length` (512 by default in the pipeline; at most 1024).
Positions are those Qwen2.5-VL gives text without images (its `get_rope_index`): the count of real
tokens before each one, on all three M-RoPE axes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from lightx2v.errors import CheckpointError, InputError

__all__ = [
    "MAX_SEQUENCE_LENGTH", "PromptTemplate", "QwenTextEncoder", "T2I_TEMPLATE", "encode_prompts",
    "load_tokenizer", "text_config_from_file", "text_key_from_file", "text_key_with_vision", "trim",
]

# diffusers' QwenImagePipeline: tokenizer_max_length, and the largest max_sequence_length it accepts
TOKENIZER_MAX_LENGTH = 1024
MAX_SEQUENCE_LENGTH = 1024
DEFAULT_MAX_SEQUENCE_LENGTH = 512


@dataclass(frozen=True)
class PromptTemplate:
    """A chat template around the prompt (`{}`), and how many of its leading tokens are dropped from
    the encoder's output (the system part: the DiT never sees it)."""

    text: str
    drop: int


T2I_TEMPLATE = PromptTemplate(
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n",
    34,
)


def _transformers():
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is a dependency of the family
        raise CheckpointError("Qwen-Image's text encoder runs through transformers: pip install transformers") from None
    return transformers


def text_config_from_file(folder: str | Path) -> Any:
    """The Qwen2.5-VL config of a text_encoder/ folder (transformers reads config.json, as it runs the
    model); anything but a qwen2_5_vl model is refused by name."""
    folder = Path(folder)
    try:
        cfg = _transformers().AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the text encoder config {folder / 'config.json'} ({exc})") from None
    if getattr(cfg, "model_type", None) != "qwen2_5_vl":
        raise CheckpointError(f"{folder / 'config.json'} is a {getattr(cfg, 'model_type', '?')} model; Qwen-Image's "
                              "text encoder is a qwen2_5_vl model (Qwen2_5_VLForConditionalGeneration)")
    return cfg


def text_key_from_file(key: str) -> str | None:
    """Our name for a text_encoder/ key: `model.*` as it is (`model.language_model.*` -> `model.*`);
    None (not loaded) for the vision tower and the LM head, which text-to-image does not run."""
    if key.startswith(("visual.", "model.visual.", "lm_head.")):
        return None
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


def text_key_with_vision(key: str) -> str | None:
    """Our name for a text_encoder/ key when the vision tower is built (the edit models): `visual.*` kept
    (`model.visual.*`, transformers' in-memory name, -> `visual.*`), the rest as `text_key_from_file`."""
    if key.startswith("visual."):
        return key
    if key.startswith("model.visual."):
        return key[len("model."):]
    return text_key_from_file(key)


class QwenTextEncoder(nn.Module):
    """forward(input_ids [B, L], attention_mask [B, L]) -> last hidden state [B, L, hidden] (after the final norm).

    `model`: transformers' Qwen2_5_VLTextModel; `visual` (vision=True): its
    Qwen2_5_VisionTransformerPretrainedModel. Their RoPE tables (`inv_freq`) are non-persistent buffers,
    computed from the config: on a meta-built encoder they are recomputed when the weights are loaded."""

    def __init__(self, config: Any, vision: bool = False) -> None:
        super().__init__()
        text_config = copy.deepcopy(getattr(config, "text_config", config))
        text_config._attn_implementation = "sdpa"  # what from_pretrained picks in the reference
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel

        self.model = Qwen2_5_VLTextModel(text_config)
        self.visual = None
        self.image_token_id = getattr(config, "image_token_id", None)
        if vision:
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

            vision_config = copy.deepcopy(config.vision_config)
            vision_config._attn_implementation = "sdpa"
            self.visual = Qwen2_5_VisionTransformerPretrainedModel(vision_config)
        self.register_load_state_dict_post_hook(_rebuild_rope)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_grid_thw: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """With images (vision=True): pixel_values [patches, C * 2 * 14 * 14] and image_grid_thw [N, 3] as
        the Qwen2-VL image processor makes them; the vision tower's merged features replace the
        `<|image_pad|>` tokens' embeddings in order. position_ids [3, B, L]: the M-RoPE positions
        (vision.mrope_positions); None: text positions on all three axes."""
        if position_ids is None:
            # positions as Qwen2.5-VL's get_rope_index gives text: real tokens before this one (padding: 1),
            # the same on the temporal, height and width axes
            pos = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
            position_ids = pos.unsqueeze(0).expand(3, -1, -1)
        embeds = self.model.embed_tokens(input_ids)  # [B, L, hidden]
        if pixel_values is not None:
            if self.visual is None:
                raise InputError("this text encoder was built without its vision tower (text-to-image); "
                                 "an edit checkpoint's encoder sees images")
            # [tokens, hidden]: one row per merged 2 x 2 patch, the images one after the other
            features = self.visual(pixel_values.to(self.visual.dtype), grid_thw=image_grid_thw).pooler_output
            slots = input_ids == self.image_token_id
            if int(slots.sum()) != features.shape[0]:
                raise InputError(f"the prompt has {int(slots.sum())} image tokens but the images give "
                                 f"{features.shape[0]} features")
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))
        out = self.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False)
        return out.last_hidden_state


def _rebuild_rope(module: QwenTextEncoder, incompatible_keys: Any) -> None:
    """After load_state_dict: the rotary embeddings' buffers, if they were left on the meta device, are
    computed again (from the config, in float32, where the embeddings now are)."""
    if module.visual is not None and module.visual.rotary_pos_emb.inv_freq.is_meta:
        rope = module.visual.rotary_pos_emb
        with torch.device("cpu"):
            inv_freq, rope.attention_scaling = rope.compute_axial_rope_parameters(rope.config)
        rope.inv_freq = inv_freq.float().to(module.visual.patch_embed.proj.weight.device)
        rope.original_inv_freq = rope.inv_freq.clone()
    rope = module.model.rotary_emb
    if not rope.inv_freq.is_meta:
        return
    device = module.model.embed_tokens.weight.device
    init = (rope.compute_default_rope_parameters if rope.rope_type == "default"
            else _transformers().modeling_rope_utils.ROPE_INIT_FUNCTIONS[rope.rope_type])
    with torch.device("cpu"):  # computed as at the reference's init (on the CPU, float32), then moved
        inv_freq, rope.attention_scaling = init(rope.config)
    rope.inv_freq = inv_freq.float().to(device)
    rope.original_inv_freq = rope.inv_freq.clone()


def load_tokenizer(folder: str | Path) -> Any:
    """The tokenizer of a tokenizer/ folder (transformers' Qwen2Tokenizer)."""
    try:
        return _transformers().AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot load the tokenizer in {folder} ({exc}); expected a Qwen2 tokenizer "
                              "(vocab.json + merges.txt, or tokenizer.json)") from None


@torch.no_grad()
def encode_prompts(
    encoder: QwenTextEncoder,
    tokenizer: Any,
    prompts: Sequence[str],
    template: PromptTemplate = T2I_TEMPLATE,
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds [B, L, hidden] in the encoder's dtype, mask [B, L] int64) as diffusers'
    QwenImagePipeline.encode_prompt computes them (see the module docstring); L is the longest prompt's
    token count after the drop, at most max_sequence_length. The mask is returned even when all ones
    (diffusers then returns None)."""
    if not 1 <= max_sequence_length <= MAX_SEQUENCE_LENGTH:
        raise InputError(f"max_sequence_length must be from 1 to {MAX_SEQUENCE_LENGTH}, got {max_sequence_length}",
                         field="max_sequence_length")
    device = encoder.model.embed_tokens.weight.device
    tokens = tokenizer([template.text.format(p) for p in prompts], max_length=TOKENIZER_MAX_LENGTH + template.drop,
                       padding=True, truncation=True, return_tensors="pt")
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    hidden = encoder(ids, mask)  # [B, L0, hidden]
    kept = [h[m.bool()][template.drop:] for h, m in zip(hidden, mask)]  # each [Li, hidden]
    longest = max(k.shape[0] for k in kept)
    embeds = torch.stack([torch.cat([k, k.new_zeros(longest - k.shape[0], k.shape[1])]) for k in kept])
    out_mask = torch.stack([torch.arange(longest, device=device) < k.shape[0] for k in kept]).long()
    return embeds[:, :max_sequence_length], out_mask[:, :max_sequence_length]


def trim(embeds: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each prompt's embeddings without padding: [Li, hidden] (the DiT attends every text token it is given)."""
    return [e[: int(m.sum())] for e, m in zip(embeds, mask)]
