"""JSON forms of what a request holds besides plain values: images and tensors.

image   a path stays a path: {"path": "/abs/or/relative.png"}; a PIL image or an array is
        PNG-encoded (lossless): {"png": "<base64>"}; bytes (an encoded file) as they are:
        {"bytes": "<base64>"}. Read back as a path string or bytes; `load_image` opens either.
tensor  {"dtype": "float32", "shape": [...], "data": "<base64 of the raw little-endian bytes>"}:
        exact, so a request with given `latents` reproduces its run.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lightx2v.errors import InputError

_TENSOR_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                  "float64": torch.float64}


def image_to_json(value: Any) -> Optional[dict]:
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return {"path": str(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": base64.b64encode(bytes(value)).decode("ascii")}
    from lightx2v.io.image import load_image

    buf = io.BytesIO()
    load_image(value).save(buf, format="PNG")
    return {"png": base64.b64encode(buf.getvalue()).decode("ascii")}


def image_from_json(value: Any, what: str = "image") -> Any:
    """A path string or the encoded bytes (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (kind, data), = value.items()
        if kind == "path" and isinstance(data, str):
            return data
        if kind in ("png", "bytes") and isinstance(data, str):
            try:
                return base64.b64decode(data, validate=True)
            except ValueError:
                raise InputError(f"{what}: {kind} is not valid base64") from None
    raise InputError(f"{what} must be a path or {{\"path\": ...}} / {{\"png\": base64}} / {{\"bytes\": base64}}, got {value!r:.60}")


def tensor_to_json(t: Optional[torch.Tensor]) -> Optional[dict]:
    if t is None:
        return None
    name = str(t.dtype).replace("torch.", "")
    if name not in _TENSOR_DTYPES:
        raise InputError(f"a {t.dtype} tensor cannot be serialized; expected one of {', '.join(_TENSOR_DTYPES)}")
    data = t.detach().cpu().contiguous()
    raw = data.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else data.numpy().tobytes()
    return {"dtype": name, "shape": list(t.shape), "data": base64.b64encode(raw).decode("ascii")}


def tensor_from_json(value: Any) -> Optional[torch.Tensor]:
    if value is None or isinstance(value, torch.Tensor):
        return value
    try:
        dtype = _TENSOR_DTYPES[value["dtype"]]
        shape = [int(s) for s in value["shape"]]
        raw = base64.b64decode(value["data"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise InputError("latents must be {\"dtype\", \"shape\", \"data\" (base64)} as to_dict writes them") from None
    np_dtype = np.int16 if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype
    arr = np.frombuffer(raw, dtype=np_dtype)
    if arr.size != int(np.prod(shape)):
        raise InputError(f"latents data holds {arr.size} values, shape {shape} needs {int(np.prod(shape))}")
    t = torch.from_numpy(arr.copy()).reshape(shape)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t
