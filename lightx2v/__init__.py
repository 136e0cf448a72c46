"""lightx2v: fast, low-memory inference for video generation diffusion models."""

__version__ = "0.1.0"

from lightx2v.api import LightX2V  # noqa: E402
from lightx2v.pipelines.base import GenerationResult  # noqa: E402

__all__ = ["LightX2V", "GenerationResult", "__version__"]
