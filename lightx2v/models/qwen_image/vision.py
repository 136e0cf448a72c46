"""The edit models' prompt encoding: the Qwen2.5-VL encoder sees the input images, as diffusers'
QwenImageEditPipeline / QwenImageEditPlusPipeline `_get_qwen_prompt_embeds` feed it.

    template     the edit chat template around the prompt (`EDIT_TEMPLATE`: one image's vision tokens
                 inside it; `EDIT_PLUS_TEMPLATE`: "Picture k: <vision tokens>" per image before the prompt)
    pixels       transformers' Qwen2-VL image processor of the folder's processor/ (smart resize to
                 multiples of 28 within its pixel budget, CLIP normalisation, 14 x 14 x 2 patches):
                 pixel_values [patches, 3 * 2 * 14 * 14], image_grid_thw [N, 3]
    tokens       each `<|image_pad|>` becomes t*h*w/4 of them (one per merged 2 x 2 patch), as the
                 processor expands it; then the tokenizer (no truncation: the edit pipelines cut nothing)
    positions    M-RoPE (`mrope_positions`): text tokens count on all three axes; an image's tokens
                 get (start, start + row, start + column); the text after it resumes at
                 start + max(rows, columns)
    encoder      QwenTextEncoder(vision=True): the vision tower's features replace the pad tokens
    output       the last hidden state minus the template's first `drop` tokens (64 for both)

The positions are the released behaviour: with transformers 4.x, Qwen2.5-VL computed these 3-D
positions by itself from image_grid_thw. transformers 5.x computes them only when the processor's
`mm_token_type_ids` is passed, and diffusers 0.42's edit pipelines do not pass it, so under
transformers 5 diffusers falls back to 1-D positions (0, 1, 2 ... on every axis) for the vision tokens.
`mrope=False` reproduces that fallback (tests compare both; the 3-D one is the default and the one
the models were trained with).

The processor is not transformers' Qwen2VLProcessor object: that needs a video processor (and torchvision)
that image editing never uses; the image processor and the tokenizer it wraps are loaded from the same
processor/ folder, and the pad-token expansion is written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.qwen_image.text import PromptTemplate, QwenTextEncoder

__all__ = ["EDIT_PLUS_TEMPLATE", "EDIT_TEMPLATE", "EditTemplate", "encode_edit_prompt", "load_image_processor",
           "mrope_positions"]

IMAGE_PAD = "<|image_pad|>"
_EDIT_SYSTEM = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n"
)
_VISION = "<|vision_start|><|image_pad|><|vision_end|>"


@dataclass(frozen=True)
class EditTemplate(PromptTemplate):
    """A chat template for edit prompts: `text` holds `{}` for the prompt (after the image part);
    `per_image` (Edit-Plus) is repeated before the prompt for each image ("Picture {k}: ..." from 1)."""

    per_image: str | None = None

    def format(self, prompt: str, n_images: int) -> str:
        images = "" if self.per_image is None else "".join(self.per_image.format(k + 1) for k in range(n_images))
        return self.text.format(images + prompt)


# QwenImageEditPipeline: one image, its vision tokens fixed in the template
EDIT_TEMPLATE = EditTemplate(_EDIT_SYSTEM + _VISION + "{}<|im_end|>\n<|im_start|>assistant\n", 64)
# QwenImageEditPlusPipeline (2509 / 2511): "Picture 1: <image> Picture 2: <image> ..." then the prompt
EDIT_PLUS_TEMPLATE = EditTemplate(_EDIT_SYSTEM + "{}<|im_end|>\n<|im_start|>assistant\n", 64,
                                  per_image="Picture {}: " + _VISION)


def load_image_processor(folder: str | Path) -> Any:
    """transformers' Qwen2-VL image processor of a processor/ folder (its preprocessor_config.json)."""
    from lightx2v.models.qwen_image.text import _transformers

    try:
        return _transformers().AutoImageProcessor.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot load the image processor in {folder} ({exc}); expected a Qwen2-VL "
                              "preprocessor_config.json (the edit models' processor/ folder)") from None


def mrope_positions(input_ids: torch.Tensor, image_grid_thw: torch.Tensor, image_token_id: int,
                    merge: int) -> torch.Tensor:
    """Qwen2.5-VL's 3-D positions for one unpadded sequence: input_ids [1, L], image_grid_thw [N, 3]
    (the processor's patch grids, in the order the images' pad tokens come) -> [3, 1, L] int64.

    Text tokens: p, p, p and p += 1. An image of t x h x w merged patches (t = 1 for an image; h, w the
    grid / merge): temporal p + frame, height p + row, width p + column, raster order; then
    p += max(h, w) (the next text token follows the image's largest index)."""
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise InputError(f"mrope_positions takes one sequence [1, L], got {tuple(input_ids.shape)}")
    ids = input_ids[0].tolist()
    grids = [tuple(int(v) for v in g) for g in image_grid_thw.tolist()]
    out, p, i, k = [], 0, 0, 0
    while i < len(ids):
        if ids[i] != image_token_id:
            out.append((p, p, p))
            p, i = p + 1, i + 1
            continue
        if k >= len(grids):
            raise InputError(f"the sequence has more image tokens than the {len(grids)} image grid(s) give")
        t, h, w = grids[k][0], grids[k][1] // merge, grids[k][2] // merge
        out.extend((p + f, p + r, p + c) for f in range(t) for r in range(h) for c in range(w))
        i, k, p = i + t * h * w, k + 1, p + max(h, w)
    if k != len(grids) or len(out) != len(ids):
        raise InputError(f"the sequence's image tokens do not match the {len(grids)} image grid(s)")
    return torch.tensor(out, dtype=torch.long, device=input_ids.device).T.unsqueeze(1)


def _expand_pads(text: str, grids: torch.Tensor, merge: int) -> str:
    """Each `<|image_pad|>` (in order) -> one per merged patch of its image, as Qwen2VLProcessor expands them."""
    parts = text.split(IMAGE_PAD)
    if len(parts) - 1 != grids.shape[0]:
        raise InputError(f"the template holds {len(parts) - 1} image slot(s) for {grids.shape[0]} image(s)")
    counts = [int(g.prod()) // merge**2 for g in grids]
    return parts[0] + "".join(IMAGE_PAD * n + rest for n, rest in zip(counts, parts[1:]))


@torch.no_grad()
def encode_edit_prompt(encoder: QwenTextEncoder, tokenizer: Any, image_processor: Any, prompt: str,
                       images: Sequence[Any], template: EditTemplate, mrope: bool = True) -> torch.Tensor:
    """The prompt's states [1, Lt, hidden] in the encoder's dtype, the encoder having seen `images`
    (RGB PIL images at the size the pipeline gives them); see the module docstring."""
    device = encoder.model.embed_tokens.weight.device
    pix = image_processor(images=list(images), return_tensors="pt")
    grids = pix["image_grid_thw"]  # [N, 3]
    merge = int(image_processor.merge_size)
    text = _expand_pads(template.format(prompt, len(images)), grids, merge)
    tokens = tokenizer([text], padding=True, return_tensors="pt")
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    pos = mrope_positions(ids, grids, encoder.image_token_id, merge) if mrope else None
    hidden = encoder(ids, mask, pix["pixel_values"].to(device), grids.to(device), position_ids=pos)
    return hidden[:, template.drop:]
