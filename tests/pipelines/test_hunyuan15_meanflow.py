"""HunyuanVideo-1.5 MeanFlow DiTs (`use_meanflow` in the transformer config): image-to-video against diffusers'
HunyuanVideo15ImageToVideoPipeline, which passes the second timestep (the next one, 0 after the last), on a
tiny random folder written by diffusers; and the second timestep our loop passes, step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from lightx2v import LightX2V  # noqa: E402

F = 5
H = W = 64
PROMPT = 'a cat turns its head, a sign reads "MEOW"'


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import transformers

    from tests.hunyuan15_fixtures import DIT, I2V_TARGET, SIGLIP_SIZE, _parts, _save

    root = tmp_path_factory.mktemp("hy15mf")
    parts = _parts(root, 0, "i2v", I2V_TARGET)
    dit = diffusers.HunyuanVideo15Transformer3DModel(
        **(DIT | {"task_type": "i2v", "target_size": I2V_TARGET, "use_meanflow": True})).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.2)
    parts["transformer"] = dit
    siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=DIT["image_embed_dim"], intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        image_size=SIGLIP_SIZE, patch_size=14)).eval()
    processor = transformers.SiglipImageProcessor(size={"height": SIGLIP_SIZE, "width": SIGLIP_SIZE})
    ref = diffusers.HunyuanVideo15ImageToVideoPipeline(**parts, image_encoder=siglip, feature_extractor=processor)
    return _save(ref, root)


@pytest.fixture(scope="module")
def ours(folder):
    return LightX2V.from_pretrained(folder[0], device="cpu", dtype=torch.float32, progress=False)


def test_meanflow_image_to_video_matches_diffusers(folder, ours):
    assert ours.pipeline.dit.config.use_meanflow and hasattr(ours.pipeline.dit, "time_r_in")
    image = Image.fromarray((np.random.RandomState(0).rand(H, W, 3) * 255).astype(np.uint8))
    z = torch.randn(1, 4, 2, H // 16, W // 16, generator=torch.Generator().manual_seed(5))
    ref = folder[1]
    ref.guider = diffusers.ClassifierFreeGuidance(guidance_scale=1.0)
    with torch.no_grad():
        want = ref(image=image, prompt=PROMPT, num_frames=F, num_inference_steps=2,  # a square image: 64 x 64
                   latents=z.clone(), output_type="np").frames[0]
    got = ours.generate(PROMPT, image=image, height=H, width=W, num_frames=F, num_inference_steps=2, latents=z,
                        guidance_scale=1.0, output_type="np").frames
    assert got.shape == want.shape == (F, H, W, 3)
    assert np.abs(got - want).max() < 1e-3
    # without the second timestep the video differs: the test could fail
    pipe = ours.pipeline
    real = pipe.dit.forward
    pipe.dit.forward = lambda *a, **kw: real(*a, **(kw | {"t_r": None}))
    try:
        plain = ours.generate(PROMPT, image=image, height=H, width=W, num_frames=F, num_inference_steps=2, latents=z,
                              guidance_scale=1.0, output_type="np").frames
    finally:
        del pipe.dit.forward
    assert np.abs(plain - want).max() > 1e-3


def test_the_second_timestep_is_the_next_one(ours):
    seen = []
    pipe = ours.pipeline
    real = pipe.dit.forward
    pipe.dit.forward = lambda *a, **kw: (seen.append((float(a[1][0]), float(kw["t_r"][0]))), real(*a, **kw))[1]
    image = Image.new("RGB", (H, W), (120, 30, 200))
    try:
        ours.generate(PROMPT, image=image, height=H, width=W, num_frames=F, num_inference_steps=2, guidance_scale=1.0,
                      seed=0, output_type="latent")
    finally:
        del pipe.dit.forward
    t = [a for a, _ in seen]
    assert [b for _, b in seen] == pytest.approx(t[1:] + [0.0])
