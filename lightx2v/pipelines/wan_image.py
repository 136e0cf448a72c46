"""Image conditioning of Wan2.1 I2V and FLF2V: frame size, resize, CLIP features, VAE latents, mask.

As the references do it (wan/image2video.py, wan/first_last_frame2video.py; diffusers'
WanImageToVideoPipeline), with each layout's own resampling:

    size   "area" (default): keep the image's aspect ratio at the requested area (height*width),
           sides multiples of 16 (VAE stride 8 x patch 2), the official rule;
           "crop": exactly height x width, the image scaled to cover it and centre-cropped;
           "pad":  exactly height x width, the image scaled to fit and padded with black.
    y      VAE-encode [image, zeros ..., (last image)] -> 16 latent channels, and a 4-channel mask
           (1 where a frame is given) -> y: [1, 20, T', H/8, W/8], concatenated to the noise by the DiT.
    clip   CLIP tokens of the original image(s) -> [1, 257 * n_images, 1280]; none for a model without
           a CLIP branch (Wan2.2 I2V-A14B: `encode_clip` None, the same y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lightx2v.config import RESIZE_MODES
from lightx2v.errors import InputError


@dataclass(frozen=True)
class ImageCondition:
    clip_fea: Optional[torch.Tensor]   # [1, 257 * n, 1280]; None without CLIP (Wan2.2 I2V-A14B)
    y: torch.Tensor          # [1, 4 + 16, T', H/8, W/8]
    height: int
    width: int


def to_signed_tensor(image) -> torch.Tensor:
    """PIL RGB -> float32 [3, H, W] in [-1, 1] (torchvision's to_tensor, then (x - 0.5) / 0.5)."""
    arr = np.array(image, dtype=np.uint8)  # a copy: torch wants a writable array
    return torch.from_numpy(arr).permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5)


def frame_size(image_hw: tuple[int, int], height: int, width: int, mode: str, stride: int = 8, patch: int = 2) -> tuple[int, int]:
    """The video's (h, w) for an image of size image_hw under `mode`."""
    if mode not in RESIZE_MODES:
        raise InputError(f"unknown resize_mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    if mode != "area":
        return height, width
    ih, iw = image_hw
    ar, area = ih / iw, height * width
    # the official rule (wan/image2video.py): latent sides floored to a multiple of the patch. The
    # 1e-6 keeps float error from flooring an exact side: the official code turns an 832x480 image
    # at the 832x480 area into 832x464 (sqrt gives 479.99999999999994); we give 832x480.
    lat_h = int((np.sqrt(area * ar) + 1e-6) // stride // patch * patch)
    lat_w = int((np.sqrt(area / ar) + 1e-6) // stride // patch * patch)
    if lat_h < patch or lat_w < patch:
        raise InputError(f"image aspect ratio {iw}x{ih} is too extreme for a {width}x{height} video")
    return int(lat_h * stride), int(lat_w * stride)


def check_not_smaller(image_hw: tuple[int, int], h: int, w: int, what: str) -> None:
    ih, iw = image_hw
    if ih < h and iw < w:
        raise InputError(f"{what} is {iw}x{ih}, smaller than the {w}x{h} video; give a larger image or a smaller --size")


def _resize(image, x: torch.Tensor, h: int, w: int, convention: str) -> torch.Tensor:
    """Resample to (h, w): official = bicubic on the [-1, 1] tensor; diffusers = PIL Lanczos."""
    if convention == "official":
        return F.interpolate(x[None], size=(h, w), mode="bicubic")[0]
    from PIL import Image

    return to_signed_tensor(image.resize((w, h), resample=Image.LANCZOS))


def resize_image(image, h: int, w: int, mode: str, convention: str) -> torch.Tensor:
    """PIL image -> [3, h, w] in [-1, 1] by `mode` (see the module docstring)."""
    x = to_signed_tensor(image)
    if mode == "area":
        return _resize(image, x, h, w, convention)
    ih, iw = x.shape[1:]
    scale = max(h / ih, w / iw) if mode == "crop" else min(h / ih, w / iw)
    sh, sw = max(1, math.ceil(ih * scale - 1e-6)), max(1, math.ceil(iw * scale - 1e-6))
    if mode == "crop":
        sh, sw = max(sh, h), max(sw, w)
    else:
        sh, sw = min(sh, h), min(sw, w)
    scaled = _resize(image, x, sh, sw, convention)
    top, left = (sh - h) // 2, (sw - w) // 2
    if mode == "crop":
        return scaled[:, top: top + h, left: left + w]
    out = torch.full((3, h, w), -1.0)  # black
    out[:, -top: -top + sh, -left: -left + sw] = scaled
    return out


def cover_crop_like(image, like_size: tuple[int, int]):
    """Centre-crop `image` (PIL) to the aspect ratio of like_size (w, h): the official FLF2V
    intent for a last frame whose size differs from the first frame's."""
    w, h = image.size
    tw, th = like_size
    scale = max(tw / w, th / h)
    cw, ch = min(w, round(tw / scale)), min(h, round(th / scale))
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def first_last_mask(num_frames: int, lat_h: int, lat_w: int, last: bool, stride_t: int = 4) -> torch.Tensor:
    """[4, T', lat_h, lat_w]: 1 on the given frames (the first, and the last for FLF2V), 0 elsewhere;
    the first frame repeated 4x so the frame axis folds into (T', 4) as the VAE's stride."""
    m = torch.zeros(1, num_frames, lat_h, lat_w)
    m[:, 0] = 1
    if last:
        m[:, -1] = 1
    m = torch.cat([m[:, :1].repeat_interleave(stride_t, dim=1), m[:, 1:]], dim=1)
    return m.view(m.shape[1] // stride_t, stride_t, lat_h, lat_w).transpose(0, 1)


def _fitted_last(image, last_image, convention: str):
    if convention == "official" and last_image.size != image.size:
        return cover_crop_like(last_image, image.size)
    return last_image


def check_images(image, last_image: Any | None, height: int, width: int, num_frames: int, mode: str,
                 convention: str) -> tuple[int, int]:
    """The video's (h, w) for these images, or one InputError: too few frames for a last frame,
    an extreme aspect ratio, an image smaller than the video. Reads no weights (a pre-load check)."""
    if last_image is not None and num_frames < 2:
        raise InputError(f"first-last-frame video needs at least 5 frames (4k+1), got {num_frames}", field="num_frames")
    ih, iw = image.size[1], image.size[0]
    h, w = frame_size((ih, iw), height, width, mode)
    check_not_smaller((ih, iw), h, w, "image")
    if last_image is not None:
        last = _fitted_last(image, last_image, convention)
        check_not_smaller((last.size[1], last.size[0]), h, w, "last image")
    return h, w


@torch.no_grad()
def build_condition(*, image, last_image: Any | None, height: int, width: int, num_frames: int, mode: str,
                    convention: str, encode_video: Callable, encode_clip: Optional[Callable], device: torch.device,
                    vae_dtype: torch.dtype) -> ImageCondition:
    """Everything the I2V/FLF2V DiT is conditioned on, for one request. `encode_video`: the VAE's encode
    (video [1, 3, F, h, w] -> normalized latents); `encode_clip` (None: no CLIP tokens): images -> tokens.
    They are called one after the other, so an offloaded VAE and CLIP tower need not share the device."""
    h, w = check_images(image, last_image, height, width, num_frames, mode, convention)
    first = resize_image(image, h, w, mode, convention)
    clip_images = [image]
    frames = [first[:, None]]
    if last_image is not None:
        last_image = _fitted_last(image, last_image, convention)
        clip_images.append(last_image)
        gap = torch.zeros(3, num_frames - 2, h, w)
        frames += [gap, resize_image(last_image, h, w, mode, convention)[:, None]]
    else:
        frames.append(torch.zeros(3, num_frames - 1, h, w))
    video = torch.cat(frames, dim=1)[None].to(device, vae_dtype)      # [1, 3, F, h, w]
    latents = encode_video(video).float()                               # [1, 16, T', h/8, w/8] normalized
    del video
    mask = first_last_mask(num_frames, h // 8, w // 8, last_image is not None).to(device)
    y = torch.cat([mask[None], latents], dim=1)
    clip_fea = None if encode_clip is None else encode_clip(clip_images)  # [1, 257 * n, 1280]
    return ImageCondition(clip_fea=clip_fea, y=y, height=h, width=w)
