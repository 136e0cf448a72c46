"""lightx2v: fast, low-memory inference for video generation diffusion models.

`LightX2V` and `GenerationResult` are loaded on first use (PEP 562), so `import lightx2v` and
`lightx2v --help` do not import torch; `from lightx2v import LightX2V` works as usual.
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

__all__ = ["GenerationResult", "LightX2V", "__version__"]

_LAZY = {"LightX2V": "lightx2v.api", "GenerationResult": "lightx2v.pipelines.base"}

if _typing.TYPE_CHECKING:
    from lightx2v.api import LightX2V
    from lightx2v.pipelines.base import GenerationResult


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'lightx2v' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *(n for n in globals() if not n.startswith("_") or n.startswith("__"))})
