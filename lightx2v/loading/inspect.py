"""Summaries of checkpoint files (tensor count, parameters, dtypes) without loading weights."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from lightx2v.loading.safetensors_io import read_safetensors_header
from lightx2v.loading.state_dict import read_tensors


def summarize(files: list | str) -> dict:
    """{'files', 'bytes', 'tensors', 'params', 'dtypes': {dtype: count}} of one component's files."""
    files = [Path(f) for f in (files if isinstance(files, list) else [files])]
    dtypes: Counter = Counter()
    params = tensors = 0
    for f in files:
        if f.suffix == ".safetensors":
            for shape, dtype in read_safetensors_header(f).values():  # header only, checked
                dtypes[str(dtype).replace("torch.", "")] += 1
                params += math.prod(shape)
                tensors += 1
        else:
            for t in read_tensors(f).values():  # mmap: only the metadata is touched
                dtypes[str(t.dtype).replace("torch.", "")] += 1
                params += t.numel()
                tensors += 1
    return {"files": [str(f) for f in files], "bytes": sum(f.stat().st_size for f in files),
            "tensors": tensors, "params": params, "dtypes": dict(dtypes)}
