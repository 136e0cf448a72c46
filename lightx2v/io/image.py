"""Image input: a path, a PIL image or an array -> an RGB PIL image, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def write_png(frame, path: str | Path) -> Path:
    """One frame (float [H, W, 3] in [0, 1], or uint8) as a PNG at `path`, atomically (temp file + rename)."""
    import os
    import tempfile

    from PIL import Image

    from lightx2v.io.atomic import make_public

    path = Path(path)
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial.png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.ascontiguousarray(arr), "RGB").save(f, format="PNG")
        make_public(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
