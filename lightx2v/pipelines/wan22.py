"""Wan2.2: T2V-A14B and I2V-A14B (two experts) and TI2V-5B (one DiT; text, or text and image).

`Wan22Pipeline` is `WanPipeline` (encode, prepare latents, the one loop, decode, write) with what
differs overridden:

    A14B      two DiTs: "dit" (high noise) and "dit_2" (low noise). The expert of each step is chosen
              in one place, the checkpoint's `Wan22Arch.expert_at` (models/wan22/arch.py), which this
              pipeline hands to the loop as `expert_for`: by timestep, t >= boundary * 1000 (inclusive,
              as the official code and diffusers: 40 steps at shift 12 and boundary 0.875 give 26 high,
              14 low), or, when the checkpoint gives `switch_step` (step-distilled presets, LightX2V's
              boundary_step_index), by step index < switch_step. The loop passes it to model_fn in
              `StepContext.expert`; `Guidance` takes a scale per expert.
    I2V-A14B  Wan2.1 I2V's y (mask + VAE latents, 20 channels; wan_image.py) without CLIP.
    TI2V-5B   the Wan2.2 VAE (48 latent channels, 16x spatially; sides multiples of 32). Without an
              image: text-to-video. With one: image-to-video as the official textimage2video.py
              (wan22_image.py): the video's size from the image, its clean latent as frame 0 (at the
              start and after every step: the loop's `after_step` hook), timestep 0 on its tokens.

Guidance scales: guidance_scale is the high-noise expert's, guidance_scale_2 the low-noise one's
(diffusers' order; the official `sample_guide_scale` tuple is (low, high)). A request that gives
only guidance_scale uses it for both experts, as diffusers does (`SamplingParams.with_defaults`);
one that gives neither uses the checkpoint's pair; one that gives only guidance_scale_2 pairs it
with the checkpoint's high-noise scale. Each expert runs CFG when its own scale is not 1 (diffusers
decides from guidance_scale alone: guidance_scale 1 turns CFG off for both experts there).
FLF2V (last_image) is not a Wan2.2 task here.

The engine (lightx2v.runtime.engine) acts on both experts: `transformer_names` holds both, and
`expert_components` ({"high": "dit", "low": "dit_2"}, the StepContext names) is what per-expert
LoRAs are given by (`lora_high=`, `--lora-low`; lightx2v.loading.lora_plan).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Optional

import torch

from lightx2v.config import EngineConfig, ModelConfig, SamplingParams
from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.wan22.arch import EXPERTS, NUM_TRAIN_TIMESTEPS
from lightx2v.pipelines.base import Guidance
from lightx2v.pipelines.wan import Conditioning, DiTInputs, WanPipeline


class Wan22Pipeline(WanPipeline):
    """Holds the loaded components of one Wan2.2 checkpoint (t2v, i2v: two experts; ti2v: one DiT)."""

    transformer_names = ("dit", "dit_2")
    # the StepContext expert names are the names users give LoRAs by (--lora-high, lora_low=):
    # every engine transform acts on both DiTs; a per-expert LoRA on the one named
    expert_components = MappingProxyType(EXPERTS)

    def __init__(self, model_config: ModelConfig, engine: EngineConfig, *, dit, text_encoder, tokenizer, vae,
                 dit_2=None, tiny_vae=None, vae_dtype: torch.dtype = torch.float32, progress: bool = True):
        super().__init__(model_config, engine, dit=dit, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae,
                         vae_dtype=vae_dtype, progress=progress)
        two = model_config.task != "ti2v"
        if (dit_2 is not None) != two:
            raise CheckpointError(f"a Wan2.2 {model_config.task} checkpoint has "
                                  + ("two experts (high and low noise)" if two else "one DiT")
                                  + f"; got {'one' if dit_2 is None else 'two'}")
        # tiny_vae: a TAEHV file decodes (WanPipeline.decode); vae: None for t2v with one
        self.components = {"dit": dit, "dit_2": dit_2, "text_encoder": text_encoder, "vae": vae, "tiny_vae": tiny_vae}

    dit_2 = property(lambda self: self.components["dit_2"])

    def dit_label(self, name: str) -> str:
        """'the low-noise expert (dit_2)' (A14B); 'this model' (TI2V-5B)."""
        from lightx2v.models.wan22.arch import expert_label

        if self.model_config.arch.dit_2 is None:
            return "this model"
        return f"the {expert_label(self.model_config, name)} ({name})"

    # -- the expert of each step ---------------------------------------------------------------
    def expert_rule(self, scheduler) -> Optional[Callable[[int, float], str]]:
        """The checkpoint's `expert_at(step, timestep)` (None for TI2V-5B's one DiT)."""
        if self.dit_2 is None:
            return None
        if scheduler.num_train_timesteps != NUM_TRAIN_TIMESTEPS:  # the boundary is a fraction of 1000
            raise CheckpointError(f"the scheduler has {scheduler.num_train_timesteps} training timesteps; the Wan2.2 "
                                  f"expert boundary is a fraction of {NUM_TRAIN_TIMESTEPS}")
        return self.model_config.arch.expert_at

    def guidance(self, p: SamplingParams) -> Guidance:
        if self.dit_2 is None:
            return super().guidance(p)
        low = p.guidance_scale if p.guidance_scale_2 is None else p.guidance_scale_2
        from lightx2v.runtime.parallel import guidance_kw

        return Guidance(scale=p.guidance_scale, scales={"high": p.guidance_scale, "low": low}, **guidance_kw(self))

    # -- conditioning ---------------------------------------------------------------------------
    def condition(self, p: SamplingParams, context: torch.Tensor, neg: Optional[torch.Tensor]) -> Conditioning:
        if self.task != "ti2v" or p.image is None:
            return super().condition(p, context, neg)  # t2v, ti2v without an image; i2v: y without CLIP
        from lightx2v.pipelines.wan22_image import FirstFrame, ti2v_image_latent

        from lightx2v.runtime.offload import placed

        with placed(self, "vae"):
            z, size = ti2v_image_latent(p.image, p.height, p.width, p.resize_mode, vae=self.vae, device=self.device,
                                        vae_dtype=self.vae_dtype, multiple=self.geometry.size_multiple)
        branch = (lambda c: None if c is None else DiTInputs(c, clean_frames=1))
        return Conditioning(branch(context), branch(neg), size, fix=FirstFrame(z))

    @classmethod
    def check_request(cls, mc: ModelConfig, p: SamplingParams) -> None:
        """Wan2.2's rules for a filled request (images already PIL), before any weight is read."""
        from lightx2v.pipelines.wan22_image import check_ti2v_image
        from lightx2v.pipelines.wan_image import check_images
        from lightx2v.runtime.memory import check_limits

        if p.last_image is not None:
            raise InputError("first-last-frame video (last_image) is not a Wan2.2 task here; give one image, or use "
                             "a Wan2.1 FLF2V checkpoint", field="last_image")
        if mc.task == "t2v" and p.image is not None:
            raise InputError("this is a text-to-video checkpoint (Wan2.2 T2V-A14B): it takes no image (use I2V-A14B "
                             "or TI2V-5B for image-to-video)", field="image")
        if mc.task == "i2v" and p.image is None:
            raise InputError("this is an image-to-video checkpoint (Wan2.2 I2V-A14B): give an image", field="image")
        if mc.task == "ti2v" and p.guidance_scale_2 is not None and p.guidance_scale_2 != p.guidance_scale:
            raise InputError("guidance_scale_2 is the low-noise expert's scale; Wan2.2 TI2V-5B has one expert",
                             field="guidance_scale_2")
        geometry = mc.spec.geometry(mc)
        geometry.check(p.height, p.width, p.num_frames)
        # the DiT's position limit and (unless p.force) the trained range (lightx2v.runtime.memory)
        check_limits(mc, height=p.height, width=p.width, num_frames=p.num_frames, steps=p.num_inference_steps,
                     force=p.force)
        if p.image is None:
            return
        if mc.task == "ti2v":
            check_ti2v_image(p.image, p.height, p.width, p.resize_mode, geometry.size_multiple)
        else:
            check_images(p.image, None, p.height, p.width, p.num_frames, p.resize_mode, mc.layout)
