"""Out of memory during a run, as one line.

`out_of_memory_as_error(stage, device, request)` wraps one stage of a pipeline ("text encoder",
"image encoder", "denoise", "VAE decode"). Inside it, torch.cuda.OutOfMemoryError (CUDA), a RuntimeError
of torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory" on Linux, "not enough
memory" on Windows), another "out of memory" RuntimeError (MPS, cuBLAS) or a MemoryError (numpy,
Python) becomes one ResourceError: which stage ran out, on which device, how much was asked for,
and what to lower. The exception's frames, which hold the stage's tensors, are let go before the
CUDA cache is emptied, so the memory is given back at once; any other exception passes untouched.
The memory estimate before a run is lightx2v.runtime.memory.
"""

from __future__ import annotations

import re
from types import TracebackType

import torch

from lightx2v.errors import ResourceError

ADVICE = {
    "text encoder": "the weights nearly fill it: use quantization, a smaller model or dtype, or a device with more memory",
    "image encoder": "lower the size or the number of frames (the VAE encodes a video of that size)",
    "denoise": "lower the size or the number of frames, or use quantization (w8a8-int8) or sequential CFG",
    "VAE decode": "lower the size or the number of frames (the VAE decode holds the whole video)",
}
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory", "alloc_failed")
_ASKED = re.compile(r"tried to allocate (\d+ bytes|[\d.]+ ?[KMGT]?i?B\b)", re.IGNORECASE)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says that memory ran out (CUDA, CPU allocator, MPS, cuBLAS, numpy)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXT)


def out_of_memory_as_error(stage: str, device: torch.device | str, request: str = "") -> OutOfMemoryGuard:
    """`with out_of_memory_as_error("denoise", device, "832x480, 81 frames"): ...` (see the module docstring)."""
    return OutOfMemoryGuard(stage, device, request)


class OutOfMemoryGuard:
    """Turns an out-of-memory inside its block into one ResourceError naming `stage`."""

    def __init__(self, stage: str, device: torch.device | str, request: str = "") -> None:
        self.stage = stage
        self.device = torch.device(device)
        self.request = request

    def __enter__(self) -> OutOfMemoryGuard:  # noqa: PYI034
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is None or not is_out_of_memory(exc):
            return False
        asked = _ASKED.search(str(exc))
        exc.__traceback__ = None  # its frames hold the stage's tensors: let them go now
        del exc, tb
        raise ResourceError(self.message(asked[1] if asked else None)) from None

    def message(self, asked: str | None = None) -> str:
        where = f"during the {self.stage}" + (f" ({self.request})" if self.request else "")
        said = f" (it asked for {asked} more)" if asked else ""
        free = ""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            got, total = torch.cuda.mem_get_info(self.device)
            free = f"; {got / 1e9:.1f} GB of {total / 1e9:.1f} GB is free now"
        advice = ADVICE.get(self.stage, "lower the size or the number of frames")
        return f"out of memory on {self.device} {where}{said}: {advice}{free}"
