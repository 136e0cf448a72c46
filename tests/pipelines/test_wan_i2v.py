"""Image-to-video and first-last-frame: the whole pipeline vs diffusers' WanImageToVideoPipeline.

A tiny I2V (and FLF2V) model is written by diffusers itself (`save_pretrained`), and the same
weights are renamed into the official layout (CLIP as `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`
with `visual.` keys beside the unused text tower). The CLIP tower keeps Wan's real width (1280,
which the DiT's image projection expects) and token count (224 / 14 -> 257), with 2 small layers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightx2v import LightX2V
from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.wan.tiny import randomize_
from tests.conftest import TEXT_DIM, _official_from_diffusers, _tiny_components

H, W, FRAMES = 64, 96, 9
PROMPT = "the cat turns its head"
NEG = "blurry"


def _image(seed: int, size=(W, H)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return Image.fromarray(base).resize(size, Image.BILINEAR)  # smooth, like a photo


def _write_i2v(root: Path, flf2v: bool) -> Path:
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from lightx2v.models.wan.tokenizer import build_tiny_tokenizer

    tokenizer, t5, _, vae, sched = _tiny_components(build_tiny_tokenizer(root / "_tok"))
    dit = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=36,
                                out_channels=16, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=128, num_layers=2,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280,
                                added_kv_proj_dim=64, pos_embed_seq_len=514 if flf2v else None)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=1280, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu",
                                            layer_norm_eps=1e-5, projection_dim=64))
    randomize_(dit, 21)
    randomize_(clip, 22)
    processor = CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224},
                                   image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
                                   resample=3, do_center_crop=True, do_normalize=True, do_resize=True)
    pipe = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=t5, vae=vae, scheduler=sched,
                                   image_processor=processor, image_encoder=clip.eval(), transformer=dit.eval())
    pipe.save_pretrained(root / "model")
    return root / "model"


def _to_official(src: Path, dst: Path, flf2v: bool) -> Path:
    from safetensors.torch import load_file

    from lightx2v.models.wan.clip import clip_state_dict_from_transformers

    _official_from_diffusers(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, "model_type": "flf2v" if flf2v else "i2v", "in_dim": 36}))
    visual = clip_state_dict_from_transformers(load_file(src / "image_encoder" / "model.safetensors"))
    full = {f"visual.{k}": v for k, v in visual.items()}
    full["textual.token_embedding.weight"] = torch.zeros(4, 8)  # the unused text tower of the real file
    full["log_scale"] = torch.tensor(4.6)
    torch.save(full, dst / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    return dst


@pytest.fixture(scope="module", params=["i2v", "flf2v"])
def task_dirs(request, tmp_path_factory):
    flf2v = request.param == "flf2v"
    root = tmp_path_factory.mktemp(request.param)
    diff = _write_i2v(root, flf2v)
    return request.param, diff, _to_official(diff, root / "official", flf2v)


@pytest.fixture(scope="module")
def latents():
    return torch.randn(1, 16, (FRAMES - 1) // 4 + 1, H // 8, W // 8, generator=torch.Generator().manual_seed(5))


def _reference(diff_dir, task, latents):
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(diff_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(last_image=_image(2)) if task == "flf2v" else {}
    out = pipe(image=_image(1), prompt=PROMPT, negative_prompt=NEG, height=H, width=W, num_frames=FRAMES,
               num_inference_steps=3, guidance_scale=5.0, latents=latents.clone(), output_type="np", **kw)
    return np.asarray(out.frames[0], dtype=np.float32)


def _ours(path, task, latents, **extra):
    pipe = LightX2V.from_pretrained(path, device="cpu", dtype=torch.float32, progress=False)
    kw = dict(last_image=_image(2)) if task == "flf2v" else {}
    return pipe, pipe.generate(prompt=PROMPT, negative_prompt=NEG, image=_image(1), height=H, width=W,
                               num_frames=FRAMES, num_inference_steps=3, guidance_scale=5.0,
                               latents=latents.clone(), output_type="np", **kw, **extra)


# Each task's diffusers reference and our plain run on the diffusers folder are made once and only read by the
# tests below (same inputs every time): they used to be recomputed per test.
@pytest.fixture(scope="module")
def reference(task_dirs, latents) -> np.ndarray:
    task, diff, _ = task_dirs
    return _reference(diff, task, latents)


@pytest.fixture(scope="module")
def ours_diffusers(task_dirs, latents):
    """(pipe, result): our resident run on the diffusers folder, the pipe's first generation."""
    task, diff, _ = task_dirs
    return _ours(diff, task, latents)


def test_diffusers_layout_matches_reference(task_dirs, latents, reference, ours_diffusers):
    task, diff, _ = task_dirs
    ref = reference
    pipe, r = ours_diffusers
    assert pipe.model_config.task == task
    assert r.frames.shape == (FRAMES, H, W, 3)
    assert np.abs(r.frames - ref).max() <= 1e-3
    # the image matters: another first frame gives another video
    other = pipe.generate(prompt=PROMPT, negative_prompt=NEG, image=_image(9), height=H, width=W, num_frames=FRAMES,
                          num_inference_steps=3, latents=latents.clone(), output_type="np",
                          **(dict(last_image=_image(2)) if task == "flf2v" else {}))
    assert np.abs(other.frames - r.frames).max() > 1e-2


def test_official_layout_loads_same_weights(task_dirs, latents, reference, ours_diffusers):
    """Same weights through the official files; with diffusers' sampling and resampling it must give
    the diffusers frames; with its own (bicubic resize, CLIP 224 resize without crop) it differs."""
    import dataclasses

    task, diff, off = task_dirs
    ref = reference
    pipe = LightX2V.from_pretrained(off, device="cpu", dtype=torch.float32, progress=False)
    assert pipe.model_config.layout == "official" and pipe.model_config.task == task
    assert pipe.model_config.defaults.num_inference_steps == (40 if task == "i2v" else 50)
    d_defaults = ours_diffusers[0].model_config  # the diffusers folder's config, as from_pretrained(diff) reads it
    assert d_defaults.layout == "diffusers"
    arch = dataclasses.replace(pipe.model_config.arch, image_processor=d_defaults.arch.image_processor)
    mc = dataclasses.replace(pipe.model_config, layout="diffusers", arch=arch,
                             defaults=dataclasses.replace(pipe.model_config.defaults, convention="diffusers",
                                                          scheduler_config=d_defaults.defaults.scheduler_config))
    pipe.pipeline.model_config = mc
    kw = dict(last_image=_image(2)) if task == "flf2v" else {}
    r = pipe.generate(prompt=PROMPT, negative_prompt=NEG, image=_image(1), height=H, width=W, num_frames=FRAMES,
                      num_inference_steps=3, guidance_scale=5.0, shift=3.0, latents=latents.clone(),
                      output_type="np", **kw)
    assert np.abs(r.frames - ref).max() <= 1e-3


def test_resize_rule_keeps_aspect_on_odd_ratios():
    from lightx2v.pipelines.wan_image import frame_size

    assert frame_size((480, 832), 480, 832, "area") == (480, 832)
    assert frame_size((1080, 1920), 480, 832, "area") == (464, 832)      # 16:9 photo at the 480p area
    assert frame_size((1920, 1080), 480, 832, "area") == (832, 464)      # portrait
    assert frame_size((1000, 1000), 480, 832, "area") == (624, 624)
    for hw in ((777, 1333), (333, 517), (1200, 500)):
        h, w = frame_size(hw, 720, 1280, "area")
        assert h % 16 == 0 and w % 16 == 0 and h * w <= 720 * 1280
        assert abs(h / w - hw[0] / hw[1]) / (hw[0] / hw[1]) < 0.08
    assert frame_size((333, 517), 480, 832, "crop") == (480, 832)


def test_crop_and_pad_modes():
    from lightx2v.pipelines.wan_image import resize_image

    img = Image.new("RGB", (200, 100), (255, 255, 255))
    crop = resize_image(img, 64, 64, "crop", "official")
    pad = resize_image(img, 64, 64, "pad", "official")
    assert crop.shape == pad.shape == (3, 64, 64)
    assert torch.allclose(crop, torch.ones_like(crop), atol=1e-3)       # white everywhere: cropped, not padded
    assert float(pad[:, 0].max()) == -1.0 and float(pad[:, 32].min()) > 0.99  # black bars above, image in the middle


def test_bad_image_inputs(task_dirs, tmp_path):
    task, diff, off = task_dirs
    pipe = LightX2V.from_pretrained(off, device="cpu", dtype=torch.float32, progress=False)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="is not a readable image"):
        pipe.generate(prompt=PROMPT, image=tmp_path / "notes.txt", height=H, width=W, num_frames=FRAMES)
    with pytest.raises(InputError, match="image file not found"):
        pipe.generate(prompt=PROMPT, image=tmp_path / "missing.png", height=H, width=W, num_frames=FRAMES)
    with pytest.raises(InputError, match="image is 40x24, smaller than the 96x48 video"):
        pipe.generate(prompt=PROMPT, image=_image(3, (40, 24)), height=H, width=W, num_frames=FRAMES,
                      **(dict(last_image=_image(2)) if task == "flf2v" else {}))
    with pytest.raises(InputError, match="give an image|give both image and last_image"):
        pipe.generate(prompt=PROMPT, height=H, width=W, num_frames=FRAMES)
    with pytest.raises(InputError, match="does not fit this checkpoint"):
        LightX2V.from_pretrained(off, device="cpu", task="t2v")


def test_t2v_checkpoint_refuses_image(tiny_official_dir):
    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)
    with pytest.raises(InputError, match="text-to-video checkpoint: it takes no image"):
        pipe.generate(prompt=PROMPT, image=_image(1), height=H, width=W, num_frames=FRAMES)
    with pytest.raises(InputError, match="task i2v does not fit this checkpoint"):
        LightX2V.from_pretrained(tiny_official_dir, device="cpu", task="i2v")


def test_missing_clip_file(task_dirs, tmp_path):
    _, _, off = task_dirs
    dst = tmp_path / "noclip"
    shutil.copytree(off, dst)
    (dst / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth").unlink()
    with pytest.raises(CheckpointError, match="CLIP image encoder not found"):
        LightX2V.from_pretrained(dst, device="cpu")


def test_cli_i2v_writes_video(task_dirs, tmp_path):
    from lightx2v.cli.main import main
    from lightx2v.io.video import probe_mp4

    task, _, off = task_dirs
    _image(1, (200, 130)).save(tmp_path / "first.png")
    _image(2, (200, 130)).save(tmp_path / "last.png")
    out = tmp_path / "v.mp4"
    args = ["generate", "--model-path", str(off), "--task", task, "--prompt", PROMPT, "--image", str(tmp_path / "first.png"),
            "--size", "96x64", "--frames", "5", "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--quiet",
            "--output", str(out)]
    if task == "flf2v":
        args += ["--last-image", str(tmp_path / "last.png")]
    assert main(args) == 0
    info = probe_mp4(out)
    # area rule: a 200x130 image at the 96x64 area -> latent sides floored to even: 96x48
    assert (info["frames"], info["width"], info["height"]) == (5, 96, 48)


def test_official_conditioning_matches_reference_with_official_clip_input(task_dirs, latents, ours_diffusers):
    """The official layout's own image path (CLIP on a plain 224x224 bicubic resize of the whole
    image, no crop) against diffusers given the CLIP tokens of that same input: only the sampler
    convention is swapped to diffusers' so the two loops can be compared step by step."""
    import dataclasses

    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPVisionModel

    from lightx2v.models.wan.clip import preprocess_official
    from lightx2v.pipelines.wan_image import to_signed_tensor

    task, diff, off = task_dirs
    images = [_image(1)] + ([_image(2)] if task == "flf2v" else [])
    clip = CLIPVisionModel.from_pretrained(diff / "image_encoder").eval()
    pixels = torch.cat([preprocess_official(to_signed_tensor(im)[None]) for im in images])
    with torch.no_grad():
        embeds = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    ref_pipe = WanImageToVideoPipeline.from_pretrained(diff, dtype=torch.float32)
    ref_pipe.set_progress_bar_config(disable=True)
    ref_pipe.encode_image = lambda image, device=None: embeds  # diffusers refuses image + image_embeds together
    kw = dict(last_image=images[1]) if task == "flf2v" else {}
    ref = ref_pipe(image=images[0], prompt=PROMPT, negative_prompt=NEG, height=H, width=W, num_frames=FRAMES,
                   num_inference_steps=3, guidance_scale=5.0, latents=latents.clone(), output_type="np",
                   **kw).frames[0]

    pipe = LightX2V.from_pretrained(off, device="cpu", dtype=torch.float32, progress=False)
    sched_cfg = ours_diffusers[0].model_config.defaults.scheduler_config  # the diffusers folder's
    mc = pipe.model_config
    pipe.pipeline.model_config = dataclasses.replace(mc, defaults=dataclasses.replace(
        mc.defaults, convention="diffusers", scheduler_config=sched_cfg))
    assert pipe.pipeline.model_config.layout == "official"
    ours = pipe.generate(prompt=PROMPT, negative_prompt=NEG, image=images[0], height=H, width=W, num_frames=FRAMES,
                         num_inference_steps=3, guidance_scale=5.0, shift=3.0, latents=latents.clone(),
                         output_type="np", **kw).frames
    assert np.abs(ours - np.asarray(ref, dtype=np.float32)).max() <= 1e-3


def test_offloaded_encoders_take_the_device_one_at_a_time(task_dirs, latents, ours_diffusers, monkeypatch):
    """With encoder offload the VAE encodes, goes back, then the CLIP tower comes (a small GPU holds one
    of them beside the DiT, not both); the frames are those of the resident run."""
    from lightx2v.runtime.offload import ModelOffload

    task, diff, _ = task_dirs
    _, ref = ours_diffusers
    events = []
    for name in ("activate", "bring", "release"):
        orig = getattr(ModelOffload, name)
        monkeypatch.setattr(ModelOffload, name, lambda self, n, _o=orig, _k=name: events.append((_k, n)) or _o(self, n))
    pipe = LightX2V.from_pretrained(diff, device="cpu", dtype=torch.float32, progress=False, offload_encoders=True)
    kw = dict(last_image=_image(2)) if task == "flf2v" else {}
    r = pipe.generate(prompt=PROMPT, negative_prompt=NEG, image=_image(1), height=H, width=W, num_frames=FRAMES,
                      num_inference_steps=3, guidance_scale=5.0, latents=latents.clone(), output_type="np", **kw)
    assert np.array_equal(r.frames, ref.frames)
    image_stage = [e for e in events if e[1] in ("vae", "clip")][:4]
    assert image_stage == [("activate", "vae"), ("release", "vae"), ("activate", "clip"), ("release", "clip")]
    assert not any(k == "bring" for k, _ in events)
