"""Qwen-Image editing: diffusers' QwenImageEditPipeline (Qwen-Image-Edit, one input image) and
QwenImageEditPlusPipeline (Qwen-Image-Edit-2509 / -2511, several), through the text-to-image pipeline.

    size          the output: the last input image's aspect ratio at 1024 x 1024 pixels, sides rounded
                  to multiples of 32 (diffusers' calculate_dimensions), unless the request gives them
    images        each input image resized (Lanczos, as diffusers' VaeImageProcessor) twice over:
                  for the VAE to that ratio at 1024 x 1024 (Edit: the same image also for the VL encoder);
                  for the VL encoder (Edit-Plus) at 384 x 384
    text          the edit template with the images' vision tokens, 3-D M-RoPE positions (the released
                  behaviour: models/qwen_image/vision.py says why it matters under transformers 5)
    condition     each image's VAE latents (the posterior mode, normalized), packed 2 x 2 and put after
                  the noisy image's tokens along the sequence; the DiT's RoPE sees one grid per part
                  (segments: diffusers' img_shapes), and predicts the noisy image's tokens only
    denoise, CFG  as text-to-image (the prompt and the negative prompt each with the images)

Design: `QwenImageEditPipeline` extends `QwenImagePipeline`: it replaces the request rules, the
conditioning (`encode_conditions`) and the model function (the condition tokens appended); the loop,
the schedule, the guidance, the decode and the output are the text-to-image pipeline's. The two
diffusers pipelines differ only in data (`EditVariant`: template, areas, how many images).
`QwenImageTasks` is what the family's spec names as its pipeline: it hands each call to the class of
the checkpoint's task.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from lightx2v.config import EngineConfig, ModelConfig, SamplingParams
from lightx2v.errors import InputError
from lightx2v.models.qwen_image.vision import EDIT_PLUS_TEMPLATE, EDIT_TEMPLATE, EditTemplate
from lightx2v.pipelines.base import StepContext
from lightx2v.pipelines.qwen_image import QwenImagePipeline, QwenInputs, pack
from lightx2v.runtime.offload import placed

__all__ = ["EditVariant", "QwenImageEditPipeline", "QwenImageTasks", "VARIANTS", "calculate_dimensions"]


@dataclass(frozen=True)
class EditVariant:
    """What tells diffusers' two edit pipelines apart."""

    title: str
    template: EditTemplate
    max_images: int                       # the most input images a request may give
    vae_area: int = 1024 * 1024           # pixels of each image the VAE encodes (and of the default output)
    condition_area: Optional[int] = None  # pixels of each image the VL encoder sees; None: the VAE's image


VARIANTS = {
    "edit": EditVariant("Qwen-Image-Edit", EDIT_TEMPLATE, max_images=1),
    # the 2509 / 2511 model cards: best with 1 to 3 input images
    "edit-plus": EditVariant("Qwen-Image-Edit-2509/2511", EDIT_PLUS_TEMPLATE, max_images=3, condition_area=384 * 384),
}


def calculate_dimensions(area: int, ratio: float) -> tuple[int, int]:
    """(width, height): the sides of `area` pixels at aspect ratio width / height, each rounded to the
    nearest multiple of 32 (Python's round, as diffusers' calculate_dimensions)."""
    width = math.sqrt(area * ratio)
    height = width / ratio
    return round(width / 32) * 32, round(height / 32) * 32


def request_images(p: SamplingParams) -> list:
    """The request's input images as a list (`image` may be one image or a list of them)."""
    if p.image is None:
        return []
    return list(p.image) if isinstance(p.image, (list, tuple)) else [p.image]


def _to_tensor(image) -> torch.Tensor:
    """RGB PIL image -> [1, 3, H, W] float32 in [-1, 1] (diffusers' VaeImageProcessor.preprocess)."""
    x = np.asarray(image).astype(np.float32) / 255.0
    return 2.0 * torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0) - 1.0


def prepare_images(images: list, v: EditVariant) -> tuple[list, list[torch.Tensor]]:
    """(the PIL images the VL encoder sees, the VAE inputs [1, 3, H, W] in [-1, 1]), as diffusers sizes them."""
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS  # VaeImageProcessor's resample
    seen, vae = [], []
    for im in images:
        w, h = calculate_dimensions(v.vae_area, im.width / im.height)
        resized = im.resize((w, h), lanczos)
        vae.append(_to_tensor(resized))
        if v.condition_area is None:
            seen.append(resized)
        else:
            cw, ch = calculate_dimensions(v.condition_area, im.width / im.height)
            seen.append(im.resize((cw, ch), lanczos))
    return seen, vae


@dataclass(frozen=True)
class EditInputs(QwenInputs):
    """One CFG branch: the prompt's states [1, Lt, D] and the condition images' packed latents [1, Lc, 4z]."""

    image_tokens: torch.Tensor = None


class QwenImageEditPipeline(QwenImagePipeline):
    """The loaded components of one Qwen-Image edit checkpoint: dit, text_encoder (with its vision
    tower), vae; the processor's tokenizer and image processor."""

    # False: the vision tokens get 1-D positions, as diffusers 0.42 under transformers 5 (not the released
    # behaviour; kept to compare with it)
    mrope = True

    @classmethod
    def load(cls, mc: ModelConfig, engine: EngineConfig, progress: bool = True) -> "QwenImageEditPipeline":
        from lightx2v.models.qwen_image.text import load_tokenizer
        from lightx2v.models.qwen_image.vision import load_image_processor

        pipe = super().load(mc, engine, progress)
        # diffusers' edit pipelines tokenize with the processor's tokenizer (the processor/ folder)
        pipe.tokenizer = load_tokenizer(mc.files["processor"])
        pipe.image_processor = load_image_processor(mc.files["processor"])
        return pipe

    @property
    def variant(self) -> EditVariant:
        return VARIANTS[self.model_config.arch.edit]

    # -- the request ----------------------------------------------------------------------------
    @classmethod
    def fill_from_images(cls, mc: ModelConfig, p: SamplingParams) -> SamplingParams:
        """A height or width left None: the last input image's ratio at the VAE area (diffusers' default)."""
        images = request_images(p)
        if not images or (p.height is not None and p.width is not None):
            return p
        im = images[-1]
        w, h = calculate_dimensions(VARIANTS[mc.arch.edit].vae_area, im.width / im.height)
        return dataclasses.replace(p, height=h if p.height is None else p.height, width=w if p.width is None else p.width)

    @classmethod
    def check_request(cls, mc: ModelConfig, p: SamplingParams) -> None:
        v = VARIANTS[mc.arch.edit]
        n = len(request_images(p))
        if n == 0:
            raise InputError(f"{v.title} edits an image: give the input image (image=..., --image)", field="image")
        if n > v.max_images:
            more = " (Qwen-Image-Edit-2509 / -2511 take up to 3)" if v.max_images == 1 else ""
            raise InputError(f"{v.title} takes at most {v.max_images} input image(s), got {n}{more}", field="image")
        if p.last_image is not None:
            raise InputError(f"{v.title} takes input images (image=...), not a last frame", field="last_image")
        if (p.num_images or 1) > 1:
            raise InputError(f"{v.title} makes one image per request here (num_images 1), got num_images "
                             f"{p.num_images}", field="num_images")
        super().check_request(mc, dataclasses.replace(p, image=None))

    # -- pieces ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_edit_text(self, prompt: str, images: list) -> torch.Tensor:
        """The prompt's states [1, Lt, D] in the compute dtype, the encoder having seen `images`."""
        from lightx2v.models.qwen_image.vision import encode_edit_prompt

        with placed(self, "text_encoder"):
            embeds = encode_edit_prompt(self.text_encoder, self.tokenizer, self.image_processor, prompt, images,
                                        self.variant.template, mrope=self.mrope)
        return embeds.to(self.device, self.engine.dtype)

    @torch.no_grad()
    def encode_images(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """VAE inputs [1, 3, H, W] -> normalized latents [1, z, 1, H/8, W/8] float32 (the posterior mode)."""
        from lightx2v.models.qwen_image.vae import encode_image

        with placed(self, "vae"):
            dev = next(self.vae.parameters()).device
            return [encode_image(self.vae, x.to(dev, self.vae_dtype)).float().to(self.device) for x in images]

    def encode_conditions(self, p: SamplingParams, cfg: bool, timings: dict) -> tuple[EditInputs, Optional[EditInputs], list]:
        seen, vae_inputs = prepare_images(request_images(p), self.variant)
        t0 = time.perf_counter()
        with self._stage("text encoder", p):
            text = self.encode_edit_text(p.prompt, seen)
            neg = self.encode_edit_text(p.negative_prompt, seen) if cfg else None
        timings["text_encoder"] = self._lap(t0)
        t1 = time.perf_counter()
        with self._stage("VAE encode", p):
            latents = self.encode_images(vae_inputs)
        timings["vae_encode"] = self._lap(t1)
        tokens = torch.cat([pack(z) for z in latents], dim=1)  # [1, sum of (h/2)(w/2), 4z]
        segments = [(1, z.shape[3] // 2, z.shape[4] // 2) for z in latents]
        return EditInputs(text, tokens), (EditInputs(neg, tokens) if cfg else None), segments

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, c: EditInputs, ctx: StepContext) -> torch.Tensor:
        # x: [B, L, 4z] the noisy image; the condition tokens follow it; the DiT returns x's tokens only
        cond = c.image_tokens.to(x.dtype).expand(x.shape[0], -1, -1)
        return super().model_fn(torch.cat([x, cond], dim=1), t, c, ctx)

    def output_metadata(self, p: SamplingParams, seed: Optional[int], size: tuple[int, int]) -> dict:
        return {**super().output_metadata(p, seed, size), "input_images": len(request_images(p))}


class QwenImageTasks:
    """The family's pipeline (models/qwen_image/spec.py): each call goes to its task's class."""

    @staticmethod
    def for_task(task: str) -> type:
        return QwenImageEditPipeline if task == "edit" else QwenImagePipeline

    # -- qwen-image 2.1: its own pipeline class (lightx2v.pipelines.qwen_image21) --
    @classmethod
    def for_model(cls, mc: ModelConfig) -> type:
        from lightx2v.models.qwen_image.spec21 import is_21

        if is_21(mc):
            from lightx2v.pipelines.qwen_image21 import QwenImage21Pipeline

            return QwenImage21Pipeline
        return cls.for_task(mc.task)

    @classmethod
    def load(cls, mc: ModelConfig, engine: EngineConfig, progress: bool = True) -> Any:
        return cls.for_model(mc).load(mc, engine, progress=progress)

    @classmethod
    def check_request(cls, mc: ModelConfig, p: SamplingParams) -> None:
        cls.for_model(mc).check_request(mc, p)

    @classmethod
    def fill_from_images(cls, mc: ModelConfig, p: SamplingParams) -> SamplingParams:
        pipe = cls.for_model(mc)
        return pipe.fill_from_images(mc, p) if hasattr(pipe, "fill_from_images") else p
