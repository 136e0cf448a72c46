"""Reading safetensors headers and writing safetensors files one tensor at a time.

`read_safetensors_header` gives every tensor's shape and dtype without reading data, and checks
the header against the file size (a truncated or corrupt download fails with a clear message).
`write_safetensors` writes a file whose header is planned up front, taking the tensors as they
come, so a converter never holds more than one tensor (the `safetensors` package's `save_file`
needs them all in one dict).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor

from lightx2v.errors import CheckpointError

# safetensors dtype -> (torch dtype, bytes per element)
ST_DTYPES = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1),
}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
TensorInfo = tuple[tuple[int, ...], torch.dtype]  # (shape, dtype)
_ST_NAMES = {dt: name for name, (dt, _) in ST_DTYPES.items()}


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """{key: (shape, dtype)} of a .safetensors file, checked against the file size (no data read)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is {size} bytes, too short to be a safetensors file; is it truncated?")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > _MAX_HEADER:
            raise CheckpointError(f"{path} is truncated or not a safetensors file: its header length ({n} bytes) "
                                  f"is beyond the file size ({size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{path} has a corrupt safetensors header (not valid JSON); download it again") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data = size - 8 - n
    out: dict[str, TensorInfo] = {}
    for key, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise CheckpointError(f"{path} has a corrupt safetensors header (entry {key!r})")
        if info["dtype"] not in ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {key} has dtype {info['dtype']}, which lightx2v does not read")
        dtype, itemsize = ST_DTYPES[info["dtype"]]
        try:
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (TypeError, ValueError):
            raise CheckpointError(f"{path} has a corrupt safetensors header (entry {key!r})") from None
        if end > data:
            raise CheckpointError(f"{path} is truncated: tensor {key} ends at byte {end} of the data, "
                                  f"the file holds {data}; download it again")
        if not 0 <= begin <= end or end - begin != math.prod(shape) * itemsize:
            raise CheckpointError(f"{path} has a corrupt safetensors header: tensor {key} {list(shape)} "
                                  f"does not fit its data offsets [{begin}, {end}]")
        out[key] = (shape, dtype)
    return out



def write_safetensors(
    path: Path, specs: Sequence[tuple[str, tuple[int, ...], torch.dtype]], tensors: Iterable[Tensor],
) -> int:
    """Write a safetensors file whose names, shapes and dtypes are known up front, taking each
    tensor from `tensors` as it comes (one tensor in memory at a time). Returns the file size."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dt in specs:
        n = math.prod(shape) * dt.itemsize
        header[name] = {"dtype": _ST_NAMES[dt], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for (name, shape, dt), t in zip(specs, tensors, strict=True):
            if tuple(t.shape) != tuple(shape) or t.dtype != dt:
                raise RuntimeError(f"converter bug: {name} came out {t.dtype} {list(t.shape)}, planned {dt} {list(shape)}")
            f.write(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
        f.flush()
        os.fsync(f.fileno())
    return 8 + len(raw) + offset
