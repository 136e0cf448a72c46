"""Qwen-Image-2.1's image-conditioned prompt: Qwen3-VL reads the prompt with the condition images in it.

What diffusers' QwenImage21Pipeline does with `image=` (reproduced by `prepare_images21` and `encode_prompt21_images`):
  1. each image is converted to RGBA and resized (Lanczos) to its aspect ratio at `resolution`^2 pixels,
     sides rounded to multiples of 32 (`calculate_dimensions`); that one resized image feeds both the
     VAE (all four channels, in [-1, 1]) and the encoder (alpha composited over white: how the
     checkpoint was trained);
  2. the template gets one `<imageK><|vision_start|><|image_pad|><|vision_end|>` per image before the
     prompt (`ti2i_template`), and each `<|image_pad|>` becomes one token per merged 2 x 2 patch of
     that image (what Qwen3VLProcessor does; the patches are the image processor's, transformers');
  3. Qwen3-VL: the vision tower's merged features replace the pad tokens' embeddings, its "deepstack"
     features are added to the first decoder layers' states at those positions, and the positions are
     3-D (M-RoPE): text tokens advance on all three axes, an image's tokens sit on its (h, w) grid from
     the position reached, which then advances by max(h, w) (Qwen3VLModel.get_rope_index, computed here);
  4. states before the final norm, the system turn dropped (text21.py); the image pad positions of what
     is left are the DiT's image slots (each one stands for 2 x 2 latent tokens of that image).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from lightx2v.errors import InputError
from lightx2v.models.qwen_image.text21 import SYSTEM_TURN_21, QwenTextEncoder21, system_drop

__all__ = ["encode_prompt21_images", "prepare_images21", "ti2i_template"]


def ti2i_template(n: int) -> str:
    """The image-conditioned template for n images, `{}` the prompt."""
    slots = "".join(f"{' ' if k > 1 else ''}<image{k}><|vision_start|><|image_pad|><|vision_end|>" for k in range(1, n + 1))
    return f"{SYSTEM_TURN_21}<|im_start|>user\n{slots}{{}}<|im_end|>\n<|im_start|>assistant\n"


def prepare_images21(images: Sequence[Any], resolution: int) -> tuple[list, list[torch.Tensor]]:
    """(the RGB images the encoder sees, the VAE inputs [1, 4, 1, H, W] in [-1, 1]) as the reference sizes them."""
    from PIL import Image

    from lightx2v.pipelines.qwen_image_edit import calculate_dimensions

    seen, vae = [], []
    for im in images:
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
        w, h = calculate_dimensions(resolution * resolution, rgba.width / rgba.height)
        resized = rgba.resize((w, h), Image.Resampling.LANCZOS)
        x = torch.from_numpy(np.asarray(resized).astype(np.float32) / 255.0).permute(2, 0, 1)  # [4, H, W]
        vae.append((2.0 * x - 1.0)[None, :, None])
        white = Image.new("RGB", resized.size, (255, 255, 255))
        white.paste(resized, mask=resized.getchannel("A"))
        seen.append(white)
    return seen, vae


def _positions(ids: torch.Tensor, grids: torch.Tensor, image_token_id: int, merge: int) -> torch.Tensor:
    """M-RoPE positions [3, 1, L] of one unpadded sequence ids [L] (Qwen3VLModel.get_rope_index)."""
    flags = (ids == image_token_id).tolist()
    parts, cur, i, k = [], 0, 0, 0
    while i < len(flags):
        j = i
        while j < len(flags) and flags[j] == flags[i]:
            j += 1
        if not flags[i]:
            parts.append(torch.arange(cur, cur + j - i).expand(3, -1))
            cur += j - i
        else:
            t, h, w = (int(v) for v in grids[k])
            h, w = h // merge, w // merge
            tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h) + cur, torch.arange(w) + cur, indexing="ij")
            block = torch.stack([tt + cur, hh, ww]).reshape(3, -1)
            if block.shape[1] != j - i:
                raise InputError(f"image {k + 1} has {j - i} pad tokens for a {t}x{h}x{w} feature grid")
            parts.append(block)
            cur += max(h, w)
            k += 1
        i = j
    return torch.cat(parts, dim=1)[:, None].to(ids.device)


@torch.no_grad()
def encode_prompt21_images(encoder: QwenTextEncoder21, tokenizer: Any, image_processor: Any, prompt: str,
                           images: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(states [1, L, hidden], image slots [L] bool) for the prompt with `images` (RGB PIL, as
    `prepare_images21` gives them) read by the encoder."""
    if encoder.visual is None:
        raise InputError("this text encoder has no vision tower (its config has no vision_config)", field="image")
    merge = image_processor.merge_size
    pix = image_processor(images=list(images), return_tensors="pt")
    grids = pix["image_grid_thw"]  # [N, 3] patches
    text = ti2i_template(len(images)).format(prompt or " ")
    pieces = text.split("<|image_pad|>")
    counts = [int(g.prod()) // (merge * merge) for g in grids]
    text = pieces[0] + "".join("<|image_pad|>" * c + rest for c, rest in zip(counts, pieces[1:]))
    device = encoder.model.embed_tokens.weight.device
    ids = tokenizer([text], return_tensors="pt").input_ids.to(device)  # [1, L]
    vis = encoder.visual(pix["pixel_values"].to(device, encoder.visual.dtype), grid_thw=grids.to(device), return_dict=True)
    slots = ids == encoder.image_token_id  # [1, L]
    embeds = encoder.model.embed_tokens(ids)
    features = vis.pooler_output.to(embeds.dtype)  # [sum of counts, hidden]
    if int(slots.sum()) != features.shape[0]:
        raise InputError(f"the prompt has {int(slots.sum())} image tokens but the images give {features.shape[0]}")
    embeds = embeds.masked_scatter(slots[..., None], features)
    states = encoder(ids, inputs_embeds=embeds, position_ids=_positions(ids[0], grids, encoder.image_token_id, merge),
                     visual_pos_masks=slots, deepstack_visual_embeds=list(vis.deepstack_features))
    drop = system_drop(tokenizer)
    return states[:, drop:], slots[0, drop:]
