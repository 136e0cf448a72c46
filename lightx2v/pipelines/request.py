"""One request, checked against one detected checkpoint before any weight is read.

`prepare_request(mc, params)` is what the CLI runs right after detection (which reads only
configs and headers) and what a loaded pipeline runs first on every call, so a bad request fails
the same way, with the same line, whether it comes before a minutes-long load or after it:

    params.validate()                     family-independent fields (numbers, types, paths)
    images -> PIL                         paths and bytes opened (a missing or unreadable file)
    pipeline.fill_from_images(mc, p)      (if the family has it) a size left None from the images
    params.with_defaults(mc.defaults)     the checkpoint's steps, guidance, shift, solver, fps
    pipeline.check_request(mc, p)         the family's rules: task vs images, image sizes,
                                          geometry, expert guidance scales; num_images > 1
                                          only for an image family (Geometry.max_frames 1)
    build_scheduler(mc.defaults, p)       the solver, its options, the step count (a distilled
                                          model's fixed count), the shift
"""

from __future__ import annotations

import dataclasses

import torch

from lightx2v.config import ModelConfig, SamplingDefaults, SamplingParams
from lightx2v.errors import InputError


def load_request_images(params: SamplingParams) -> SamplingParams:
    """Image paths or bytes (a request read from JSON, a CLI path) -> RGB PIL images; `image` may be a
    list of them (an edit model's several input images: a list of PIL images)."""
    if params.image is None and params.last_image is None:
        return params
    from lightx2v.io.image import load_image

    image = params.image
    if isinstance(image, (list, tuple)):
        if not image:
            raise InputError("image is an empty list; give one image, or a list of them", field="image")
        image = [load_image(im, f"image {i + 1}") for i, im in enumerate(image)]
    elif image is not None:
        image = load_image(image, "image")
    return dataclasses.replace(
        params, image=image,
        last_image=None if params.last_image is None else load_image(params.last_image, "last image"),
    )


def build_scheduler(defaults: SamplingDefaults, p: SamplingParams, device: torch.device | str = "cpu"):
    """The scheduler of a filled request, its timesteps set: the checkpoint's own diffusers
    scheduler config when its solver is the one asked for, else ours with the default's options."""
    from lightx2v.schedulers import make_scheduler, scheduler_from_diffusers_config

    if defaults.scheduler_config is not None and p.solver == defaults.solver:
        sched, _ = scheduler_from_diffusers_config(defaults.scheduler_config)
    else:
        options = defaults.solver_options if p.solver == defaults.solver else None
        sched = make_scheduler(p.solver, convention=defaults.convention, config=options)
    sched.set_timesteps(p.num_inference_steps, shift=p.shift, device=device)
    return sched


def prepare_request(mc: ModelConfig, params: SamplingParams) -> SamplingParams:
    """The request filled with the checkpoint's defaults, every check that needs no weights passed."""
    params.validate()
    p = load_request_images(params)
    # a family whose output size follows its input images (Qwen-Image edit) fills height / width first
    fill = getattr(mc.spec.pipeline(), "fill_from_images", None)
    if fill is not None:
        p = fill(mc, p)
    p = p.with_defaults(mc.defaults)
    mc.spec.pipeline().check_request(mc, p)
    if p.num_images != 1 and mc.spec.geometry(mc).max_frames != 1:  # (an image family's geometry: one frame)
        from lightx2v.errors import InputError

        raise InputError(f"num_images is for image models; {mc.spec.title} makes one video per request",
                         field="num_images")
    build_scheduler(mc.defaults, p, "cpu")
    return p
