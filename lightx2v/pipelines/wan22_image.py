"""Wan2.2 TI2V-5B image-to-video: the video's size from the image, and the image's clean latent frame.

As the official wan/textimage2video.py `i2v` does it (and ModelTC/LightX2V's Wan22DenseRunner):

    size   "area" (default): `best_output_size`: sides multiples of 32 (VAE stride 16 x patch 2) with
           an area within height * width, the aspect ratio closest to the image's (rounding the width
           first or the height first); the image LANCZOS-resized by the larger of the two scales and
           centre-cropped to that size;
           "crop": the same resize and centre crop, to exactly height x width;
           "pad":  exactly height x width, the image scaled to fit and padded with black.
    z      the VAE latent of that one frame, [1, 48, 1, h/16, w/16] (normalized). It replaces latent
           frame 0 of the initial noise and, after every step, of the latents (the official re-mix
           `(1 - mask) * z + mask * x`, mask 0 on frame 0: `FirstFrame`); the DiT is given timestep 0
           on that frame's tokens (per-token timesteps: `DiTInputs.clean_frames`).

diffusers' WanImageToVideoPipeline(expand_timesteps=True) differs in two ways:
- it resizes the image plainly to (height, width): no size from the image's aspect ratio, no crop.
  For an image already of the video's size, both give the same pixels;
- it steps the scheduler on the un-mixed latents, and mixes only the DiT's input and the final
  latents. The scheduler's update is element-wise, so every slot but the first frame's gets the same
  values, and those are overwritten by z in both: the same video.
"""

from __future__ import annotations

import torch

from lightx2v.config import RESIZE_MODES
from lightx2v.errors import InputError
from lightx2v.pipelines.wan_image import check_not_smaller, resize_image, to_signed_tensor


def best_output_size(w: int, h: int, dw: int, dh: int, expected_area: float) -> tuple[int, int]:
    """(ow, oh): multiples of (dw, dh) with ow * oh <= expected_area and the aspect ratio closest to
    w / h (the official wan/utils/utils.py `best_output_size`, its float arithmetic kept)."""
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow
    ow1 = int(ow // dw * dw)        # width first
    oh2 = int(oh // dh * dh)        # height first
    if ow1 < dw or oh2 < dh:
        raise InputError(f"an image of aspect ratio {w}x{h} does not fit a video of area {int(expected_area)} "
                         f"with sides multiples of {dw}; give a larger size or a less extreme image")
    oh1 = int(expected_area / ow1 // dh * dh)
    ow2 = int(expected_area / oh2 // dw * dw)
    if oh1 < dh or ow2 < dw:
        raise InputError(f"an image of aspect ratio {w}x{h} does not fit a video of area {int(expected_area)} "
                         f"with sides multiples of {dw}; give a larger size or a less extreme image")
    ratio1, ratio2 = ow1 / oh1, ow2 / oh2
    if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio):
        return ow1, oh1
    return ow2, oh2


def ti2v_frame_size(image_wh: tuple[int, int], height: int, width: int, mode: str, multiple: int = 32) -> tuple[int, int]:
    """The video's (h, w) for an image of size (w, h) under `mode` (see the module docstring)."""
    if mode not in RESIZE_MODES:
        raise InputError(f"unknown resize_mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    if mode != "area":
        return height, width
    ow, oh = best_output_size(*image_wh, multiple, multiple, height * width)
    return oh, ow


def check_ti2v_image(image, height: int, width: int, mode: str, multiple: int = 32) -> tuple[int, int]:
    """The video's (h, w) for this image, or one InputError (an extreme aspect ratio, an image smaller
    than the video). Reads no weights (a pre-load check)."""
    h, w = ti2v_frame_size(image.size, height, width, mode, multiple)
    check_not_smaller((image.size[1], image.size[0]), h, w, "image")
    return h, w


def ti2v_image_tensor(image, h: int, w: int, mode: str) -> torch.Tensor:
    """PIL image -> [3, h, w] in [-1, 1]: LANCZOS by the larger scale, centre crop (the official
    rounding: round(side * scale), crop offsets floored); "pad" fits and pads with black."""
    from PIL import Image

    if mode == "pad":
        return resize_image(image, h, w, "pad", "diffusers")
    iw, ih = image.size
    scale = max(w / iw, h / ih)
    img = image.resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
    x1, y1 = (img.width - w) // 2, (img.height - h) // 2
    return to_signed_tensor(img.crop((x1, y1, x1 + w, y1 + h)))


class FirstFrame:
    """The latents with frame 0 replaced by a clean image latent z [1, C, 1, h, w]: the official
    `(1 - mask) * z + mask * x` with mask 0 on frame 0 and 1 elsewhere, written as a copy."""

    def __init__(self, z: torch.Tensor) -> None:
        self.z = z

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.shape[:2] != self.z.shape[:2] or latents.shape[3:] != self.z.shape[3:]:
            raise InputError(f"latents {list(latents.shape)} do not fit the image latent {list(self.z.shape)}")
        out = latents.clone()
        out[:, :, :1] = self.z.to(out.dtype)
        return out


@torch.no_grad()
def ti2v_image_latent(image, height: int, width: int, mode: str, *, vae, device: torch.device,
                      vae_dtype: torch.dtype, multiple: int = 32) -> tuple[torch.Tensor, tuple[int, int]]:
    """(z [1, C, 1, h/16, w/16] float32, (h, w)): the image's latent and the video's size."""
    h, w = check_ti2v_image(image, height, width, mode, multiple)
    pixels = ti2v_image_tensor(image, h, w, mode)[None, :, None]         # [1, 3, 1, h, w]
    return vae.encode(pixels.to(device, vae_dtype)).float(), (h, w)
