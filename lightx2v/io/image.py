"""Image input: a path, a PIL image or an array -> an RGB PIL image, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from lightx2v.errors import InputError


def load_image(value: Any, what: str = "image"):
    """RGB PIL.Image from a file path, encoded bytes, a PIL image, or an array [H, W, 3|4] / [H, W] (uint8, or float in [0, 1])."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (bytes, bytearray)):  # an encoded file (a request read back from JSON)
        import io

        try:
            with Image.open(io.BytesIO(bytes(value))) as im:
                im.load()
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{what} bytes are not a readable image ({type(exc).__name__}); expected PNG, JPEG or WebP data") from None
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        if not path.is_file():
            raise InputError(f"{what} file not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{what} {path} is not a readable image ({type(exc).__name__}); expected a PNG, JPEG or WebP file") from None
    try:
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if isinstance(value, np.ndarray):
        arr = value
        if arr.ndim == 3 and arr.shape[-1] == 4:
            arr = arr[..., :3]
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise InputError(f"{what} array must be [H, W, 3] (RGB), got shape {tuple(value.shape)}")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating):
                raise InputError(f"{what} array must be uint8 or float in [0, 1], got {arr.dtype}")
            arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    raise InputError(f"{what} must be a file path, image bytes, a PIL image or an array, got {type(value).__name__}")


# lossy formats at a high quality (PIL's default, 75, visibly blurs fine detail); PNG is lossless
LOSSY_QUALITY = 95


def encode_png(frame, dst, metadata: Optional[dict] = None) -> None:
    """One frame (float [H, W, 3] in [0, 1], or uint8) as a PNG into the file `dst` (no atomic logic:
    see io/output.py); `metadata` goes into a `Comment` text chunk as JSON."""
    encode_image(frame, dst, "png", metadata)


def encode_image(frame, dst, fmt: str, metadata: Optional[dict] = None) -> None:
    """One frame (float [H, W, 3] in [0, 1], or uint8) into the file `dst` as `fmt`: "png" (lossless;
    `metadata` as JSON in an iTXt `Comment` chunk), "jpeg" (quality 95, 4:4:4; the JSON in the JPEG
    comment segment) or "webp" (quality 95; no metadata inside: the sidecar has it). No atomic logic:
    see io/output.py."""
    import json

    from PIL import Image

    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(f"a {fmt.upper()} image must be [H, W, 3], got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    text = json.dumps(metadata, ensure_ascii=False, separators=(",", ":")) if metadata else None
    image = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if fmt == "png":
        from PIL.PngImagePlugin import PngInfo

        info = None
        if text:
            info = PngInfo()
            info.add_itxt("Comment", text)
        image.save(dst, format="PNG", pnginfo=info)
    elif fmt == "jpeg":
        extra = {"comment": text.encode()} if text else {}
        image.save(dst, format="JPEG", quality=LOSSY_QUALITY, subsampling=0, **extra)
    elif fmt == "webp":
        image.save(dst, format="WEBP", quality=LOSSY_QUALITY)
    else:
        raise InputError(f"unknown image format {fmt!r}; expected png, jpeg or webp")


def write_png(frame, path: str | Path, metadata: Optional[dict] = None, overwrite: bool = True) -> Path:
    """One frame as a PNG at `path`, by the output rules of io/output.py (atomic; folders, symlinks,
    /dev/null and FIFOs as described there; a sidecar `<path>.json` when `metadata` is given)."""
    from lightx2v.io.output import save

    return save(np.asarray(frame)[None], path, output_type="png", overwrite=overwrite, metadata=metadata)
