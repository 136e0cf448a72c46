"""HunyuanVideo-1.5 image-to-video, whole pipeline, against diffusers' HunyuanVideo15ImageToVideoPipeline on one
tiny random I2V folder written by diffusers in the released layout (tests/hunyuan15_fixtures.py): the same
image and initial latents give the same frames (within 1e-3) at the size diffusers picks from the image;
then the size rule, the crop, the image's effect, batched CFG, and the request rules (no image, a last
image)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402
from tests.hunyuan15_fixtures import GUIDANCE, I2V_TARGET, LATENT, write_hunyuan15_i2v  # noqa: E402

F = 5  # 2 latent frames
PROMPT = 'a cat turns its head, a sign reads "MEOW"'
NEG = "blurry"


def _image(h, w, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_hunyuan15_i2v(tmp_path_factory.mktemp("hy15i2v"))


@pytest.fixture(scope="module")
def ours(folder):
    return LightX2V.from_pretrained(folder[0], device="cpu", dtype=torch.float32, progress=False)


def _noise(h, w, seed=5):
    return torch.randn(1, LATENT, (F - 1) // 4 + 1, h // 16, w // 16, generator=torch.Generator().manual_seed(seed))


def test_folder_is_image_to_video(ours):
    mc = ours.pipeline.model_config
    assert (mc.family, mc.task) == ("hunyuanvideo-1.5", "i2v")
    assert mc.defaults.guidance_scale == GUIDANCE
    assert "image_encoder" in ours.pipeline.components


def test_matches_diffusers_with_cfg(folder, ours):
    """A 40 x 70 image: diffusers picks the 48 x 80 bucket of target 64 and crops the image to it."""
    image = _image(40, 70)
    h, w = folder[1].video_processor.calculate_default_height_width(40, 70, I2V_TARGET)
    assert (h, w) == (48, 80)
    z = _noise(h, w)
    ref = folder[1]
    ref.guider = diffusers.ClassifierFreeGuidance(guidance_scale=GUIDANCE)
    with torch.no_grad():
        want = ref(image=image, prompt=PROMPT, negative_prompt=NEG, num_frames=F, num_inference_steps=2,
                   latents=z.clone(), output_type="np").frames[0]
    got = ours.generate(PROMPT, image=image, negative_prompt=NEG, num_frames=F, num_inference_steps=2, latents=z,
                        output_type="np")
    assert got.frames.shape == want.shape == (F, h, w, 3)
    err = np.abs(got.frames - want).max()
    assert err < 1e-3, err
    assert got.stats["model_calls"] == 4


@pytest.mark.parametrize("hw", [(64, 64), (30, 100), (90, 40)])
def test_size_follows_the_image_as_diffusers(folder, hw):
    from lightx2v.models.hunyuan15.layouts import default_size

    for target in (I2V_TARGET, 640, 960):
        want = folder[1].video_processor.calculate_default_height_width(*hw, target)
        assert default_size(target, hw) == tuple(want)


def test_cover_crop_is_diffusers(folder):
    from lightx2v.models.hunyuan15.image import cover_crop

    image = _image(37, 91, seed=3)
    for h, w in ((48, 80), (64, 32)):
        want = folder[1].video_processor.resize(image, height=h, width=w, resize_mode="crop")
        assert np.array_equal(np.array(cover_crop(image, h, w)), np.array(want))


def _latents(ours, image, **kw):
    args = dict(num_frames=F, num_inference_steps=2, guidance_scale=1.0, seed=3, output_type="latent") | kw
    return ours.generate(PROMPT, image=image, **args).latents


def test_a_different_image_gives_a_different_video(ours):
    """Square images at 40 px pick the 64 x 64 bucket (the size rule through generate)."""
    a, b = _latents(ours, _image(40, 40, seed=1)), _latents(ours, _image(40, 40, seed=2))
    assert a.shape == b.shape == (1, LATENT, 2, 4, 4)
    assert (a - b).abs().max() > 1e-3


def test_a_given_size_wins(ours):
    got = _latents(ours, _image(40, 70), height=32, width=64)
    assert got.shape == (1, LATENT, 2, 2, 4)


def test_missing_image_is_one_line(ours):
    with pytest.raises(InputError) as err:
        ours.generate(PROMPT, num_frames=F, num_inference_steps=2, height=32, width=32, output_type="latent")
    assert err.value.field == "image" and "give the first frame" in str(err.value) and "\n" not in str(err.value)


def test_last_image_is_refused(ours):
    with pytest.raises(InputError) as err:
        ours.generate(PROMPT, image=_image(32, 32), last_image=_image(32, 32), num_frames=F, num_inference_steps=2,
                      output_type="latent")
    assert err.value.field == "last_image"


def test_batched_cfg_matches_sequential(folder, ours):
    """Batched CFG carries the image tokens and `y` in both rows (HunyuanInputs.cat_batch)."""
    batched = LightX2V.from_pretrained(folder[0], device="cpu", dtype=torch.float32, progress=False,
                                       cfg_mode="batched")
    kw = dict(guidance_scale=GUIDANCE, height=32, width=32, negative_prompt=NEG)
    a, b = _latents(ours, _image(40, 40, seed=4), **kw), _latents(batched, _image(40, 40, seed=4), **kw)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_encoder_offload_includes_the_image_encoder(folder, ours):
    """SigLIP is an encoder like the others: in host memory, on the device for its stage only."""
    off = LightX2V.from_pretrained(folder[0], device="cpu", dtype=torch.float32, progress=False, offload_encoders=True)
    assert "image_encoder" in off.pipeline.encoder_offload.models
    image = _image(40, 40, seed=6)
    assert torch.equal(_latents(off, image), _latents(ours, image))
