"""The Python API: `LightX2V.from_pretrained(...)` then `pipe.generate(...)`.

    from lightx2v import LightX2V
    pipe = LightX2V.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B", device="cuda", dtype=torch.bfloat16)
    result = pipe.generate(prompt="a cat surfing", num_frames=81, seed=0, output_path="cat.mp4")

A path that is a local folder is used as-is; anything else is taken as a Hugging Face repo id.
The layout (official or diffusers) is detected from the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lightx2v.config import EngineConfig, ModelConfig, SamplingParams, parse_dtype
from lightx2v.errors import InputError
from lightx2v.pipelines.base import GenerationResult


class LightX2V:
    """A loaded generation pipeline."""

    def __init__(self, pipeline, model_config: ModelConfig, engine: EngineConfig):
        self.pipeline = pipeline
        self.model_config = model_config
        self.engine = engine

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        device: str = "cuda",
        dtype: torch.dtype | str = torch.bfloat16,
        attention: str = "auto",
        *,
        task: Optional[str] = None,
        cache_dir: Optional[str | Path] = None,
        revision: Optional[str] = None,
        local_files_only: bool = False,
        progress: bool = True,
    ) -> "LightX2V":
        """Detect the checkpoint layout, build the models on the meta device and load them (mmap).

        `task` ("t2v", "i2v", "flf2v"), if given, must be the checkpoint's: checked before any weight is read.
        """
        from lightx2v.config import resolve_device
        from lightx2v.loading.detect import detect
        from lightx2v.loading.hub import resolve_model_path
        from lightx2v.pipelines.wan import WanPipeline

        engine = EngineConfig(device=str(resolve_device(device)), dtype=parse_dtype(dtype), attention=attention)
        root = resolve_model_path(path_or_repo_id, cache_dir=cache_dir, revision=revision,
                                  local_files_only=local_files_only)
        mc = detect(root)
        if task is not None and task != mc.task:
            raise InputError(f"--task {task} does not fit this checkpoint: {root} is a Wan2.1 {mc.task} model")
        return cls(WanPipeline.load(mc, engine, progress=progress), mc, engine)

    def generate(
        self,
        prompt: str,
        negative_prompt: Optional[str] = None,
        image: Any = None,
        height: int = 480,
        width: int = 832,
        num_frames: int = 81,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        shift: Optional[float] = None,
        solver: Optional[str] = None,
        seed: Optional[int] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "mp4",
        output_path: Optional[str | Path] = None,
        callback: Optional[Callable] = None,
        *,
        last_image: Any = None,
        resize_mode: str = "area",
        fps: Optional[int] = None,
        video_length: Optional[int] = None,
        resolution: Optional[tuple[int, int]] = None,
    ) -> GenerationResult:
        """Generate one video. `image` (and `last_image`) make it image-to-video (first-last-frame):
        a path, PIL image or array. `video_length` is an alias of num_frames, `resolution=(h, w)` of height/width."""
        from lightx2v.io.image import load_image

        if video_length is not None:
            num_frames = video_length
        if resolution is not None:
            if len(resolution) != 2:
                raise InputError(f"resolution must be (height, width), got {resolution!r}")
            height, width = (int(v) for v in resolution)
        params = SamplingParams(
            prompt=prompt, negative_prompt=negative_prompt,
            image=None if image is None else load_image(image, "image"),
            last_image=None if last_image is None else load_image(last_image, "last image"),
            resize_mode=resize_mode, height=height, width=width,
            num_frames=num_frames, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            shift=shift, solver=solver, seed=seed, latents=latents, output_type=output_type,
            output_path=None if output_path is None else str(output_path), fps=fps, callback=callback,
        )
        return self.pipeline(params)
