"""Qwen-Image editing, whole pipeline, against diffusers' QwenImageEditPipeline (Qwen-Image-Edit, one
input image) and QwenImageEditPlusPipeline (-2509/-2511, here two images and the 2511 `zero_cond_t`)
on tiny random folders in the released layout (model_index.json, transformer/, text_encoder/ with its
vision tower, tokenizer/, processor/, vae/, scheduler/): the same initial latents give the same image
(within 1e-3). Then the 1-D M-RoPE fallback, the size rule, the request rules and detection.

Two things are set on both sides, so the runs fit a 2-core CPU and this environment:
- the image areas (1024 x 1024 for the VAE, 384 x 384 for Edit-Plus' VL encoder) are made small, in
  diffusers (its module constant / its calculate_dimensions) and in ours (`VARIANTS`) alike;
- the processor: transformers' Qwen2VLProcessor cannot be built here (it needs a video processor and
  torchvision), so the reference gets one whose class check skips the absent video processor; the
  folder's processor/ holds what the released one holds for images (preprocessor_config.json + tokenizer).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as ref_edit  # noqa: E402
import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as ref_plus  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel,
)
from PIL import Image  # noqa: E402
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2VLProcessor  # noqa: E402

from lightx2v import LightX2V  # noqa: E402
from lightx2v.config import SamplingParams  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402
from lightx2v.loading.detect import detect  # noqa: E402
from lightx2v.models.qwen_image.tiny import (  # noqa: E402
    build_tiny_tokenizer, tiny_image_processor_config, tiny_text_config,
)
from lightx2v.models.qwen_image.vision import load_image_processor  # noqa: E402
from lightx2v.pipelines import qwen_image_edit  # noqa: E402
from lightx2v.pipelines.qwen_image import pack  # noqa: E402

DIT = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
           joint_attention_dim=32, axes_dims_rope=[4, 6, 6])
VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0])
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, num_train_timesteps=1000,
                 shift=1.0, shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)
VAE_AREA, CONDITION_AREA = 128 * 128, 96 * 96  # the released 1024 * 1024 and 384 * 384, made small
PROMPT, NEG = "make the cat red", "blurry"


def _randomize(module, scale=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if name.endswith(("gamma", "norm.weight")) else noise * scale)


class _Processor(Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor (see the module docstring)."""

    def check_argument_for_proper_class(self, name, arg):
        if name == "video_processor" and arg is None:
            return None
        return super().check_argument_for_proper_class(name, arg)


def _image(w, h, seed):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


def _save(root, name, cls, dit, vae, te, tok):
    """A released-layout folder: diffusers writes the components; processor/ as the releases ship it."""
    ref = cls(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=te, tokenizer=tok,
              processor=None, transformer=dit)
    ref.save_pretrained(str(root / name))
    index = json.loads((root / name / "model_index.json").read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (root / name / "model_index.json").write_text(json.dumps(index))
    tok.save_pretrained(str(root / name / "processor"))
    (root / name / "processor" / "preprocessor_config.json").write_text(json.dumps(tiny_image_processor_config()))
    ref.processor = _Processor(image_processor=load_image_processor(root / name / "processor"), tokenizer=tok)
    return root / name, ref


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen_edit")
    torch.manual_seed(0)
    dit = QwenImageTransformer2DModel(**DIT).eval()
    _randomize(dit, 0.3, 1)
    dit_2511 = QwenImageTransformer2DModel(**DIT, zero_cond_t=True).eval()
    dit_2511.load_state_dict(dit.state_dict())
    vae = AutoencoderKLQwenImage(**VAE).eval()
    _randomize(vae, 0.2, 2)
    te = Qwen2_5_VLForConditionalGeneration(tiny_text_config()).eval()
    _randomize(te, 0.2, 3)
    build_tiny_tokenizer(root / "_tok")
    tok = AutoTokenizer.from_pretrained(str(root / "_tok"))
    return {"edit": _save(root, "edit", ref_edit.QwenImageEditPipeline, dit, vae, te, tok),
            "plus": _save(root, "plus", ref_plus.QwenImageEditPlusPipeline, dit_2511, vae, te, tok)}


@pytest.fixture(scope="module")
def ours(folders):
    return {k: LightX2V.from_pretrained(v[0], device="cpu", dtype=torch.float32, progress=False)
            for k, v in folders.items()}


@pytest.fixture
def small(monkeypatch):
    """The small areas on both sides."""
    v = qwen_image_edit.VARIANTS
    monkeypatch.setitem(v, "edit", dataclasses.replace(v["edit"], vae_area=VAE_AREA))
    monkeypatch.setitem(v, "edit-plus", dataclasses.replace(v["edit-plus"], vae_area=VAE_AREA,
                                                            condition_area=CONDITION_AREA))
    dims = ref_edit.calculate_dimensions
    monkeypatch.setattr(ref_edit, "calculate_dimensions", lambda area, ratio: dims(VAE_AREA, ratio))
    # Edit-Plus: the output's default size is a literal 1024 * 1024 in its __call__, the images' its constants
    plus_dims = ref_plus.calculate_dimensions
    monkeypatch.setattr(ref_plus, "calculate_dimensions",
                        lambda area, ratio: plus_dims(VAE_AREA if area == 1024 * 1024 else area, ratio))
    monkeypatch.setattr(ref_plus, "VAE_IMAGE_SIZE", VAE_AREA)
    monkeypatch.setattr(ref_plus, "CONDITION_IMAGE_SIZE", CONDITION_AREA)


def released_positions(monkeypatch, te):
    """diffusers 0.42 does not pass `mm_token_type_ids`, so under transformers 5 its text encoder gives the
    vision tokens 1-D positions; the released models were trained (transformers 4) with 3-D M-RoPE ones.
    Passing what transformers 5 needs (image tokens typed 1) gives the reference the released behaviour."""
    forward = te.forward

    def with_types(*args, **kw):
        kw["mm_token_type_ids"] = (kw["input_ids"] == te.config.image_token_id).int()
        return forward(*args, **kw)

    monkeypatch.setattr(te, "forward", with_types)


def _noise(h, w, seed=5):
    return torch.randn(1, 4, 1, h // 8, w // 8, generator=torch.Generator().manual_seed(seed))


def _reference(ref, image, z, steps=3, **kw):
    with torch.no_grad():
        return ref(image=image, prompt=PROMPT, latents=pack(z), output_type="np", num_inference_steps=steps, **kw).images


def _ours(pipe, image, z, steps=3, **kw):
    return pipe.generate(PROMPT, image=image, latents=z, output_type="np", num_inference_steps=steps, **kw).images


def test_edit_matches_diffusers(folders, ours, small, monkeypatch):
    """One image, the default size (the image's ratio at the VAE area: 160 x 96), true CFG."""
    path, ref = folders["edit"]
    released_positions(monkeypatch, ref.text_encoder)
    image, z = _image(96, 64, 0), _noise(96, 160)
    want = _reference(ref, image, z, negative_prompt=NEG, true_cfg_scale=4.0)
    got = _ours(ours["edit"], image, z, negative_prompt=NEG, guidance_scale=4.0)
    assert got.shape == want.shape == (1, 96, 160, 3)
    err = np.abs(got - want).max()
    assert err < 1e-3, err


def test_edit_plus_matches_diffusers(folders, ours, small, monkeypatch):
    """Two images of different ratios (the output takes the last one's), 2511's zero_cond_t, true CFG."""
    path, ref = folders["plus"]
    released_positions(monkeypatch, ref.text_encoder)
    images, z = [_image(96, 64, 0), _image(64, 96, 1)], _noise(160, 96)
    want = _reference(ref, images, z, negative_prompt=NEG, true_cfg_scale=4.0)
    res = ours["plus"].generate(PROMPT, image=images, latents=z, output_type="np", num_inference_steps=3,
                                negative_prompt=NEG, guidance_scale=4.0)
    assert res.images.shape == want.shape == (1, 160, 96, 3)
    err = np.abs(res.images - want).max()
    assert err < 1e-3, err
    assert res.stats["model_calls"] == 6 and "vae_encode" in res.timings


def test_one_d_positions_are_diffusers_default_and_differ(folders, ours, small, monkeypatch):
    """diffusers as it runs under transformers 5 (1-D positions for the vision tokens) is what ours gives
    with mrope off, and differs from the released 3-D positions (so a regression to 1-D is caught)."""
    _, ref = folders["plus"]
    images, z = [_image(96, 64, 0), _image(64, 96, 1)], _noise(64, 64)
    want_1d = _reference(ref, images, z, steps=2, true_cfg_scale=1.0, height=64, width=64)
    pipe = ours["plus"]
    got_3d = _ours(pipe, images, z, steps=2, guidance_scale=1.0, height=64, width=64)
    monkeypatch.setattr(pipe.pipeline, "mrope", False)
    got_1d = _ours(pipe, images, z, steps=2, guidance_scale=1.0, height=64, width=64)
    assert np.abs(got_1d - want_1d).max() < 1e-3
    assert np.abs(got_3d - want_1d).max() > 1e-3


def test_calculate_dimensions_is_diffusers():
    # (the module's own functions: the `small` fixture is not used here)
    for area in (1024 * 1024, 384 * 384, VAE_AREA):
        for ratio in (1.0, 1.5, 2 / 3, 16 / 9, 9 / 16, 0.3, 3.7, 1328 / 1024):
            w, h = qwen_image_edit.calculate_dimensions(area, ratio)
            assert (w, h) == ref_plus.calculate_dimensions(area, ratio) == ref_edit.calculate_dimensions(area, ratio)[:2]
            assert w % 32 == 0 and h % 32 == 0


def test_a_given_size_is_kept(ours, small):
    z = _noise(64, 96)
    got = ours["edit"].generate(PROMPT, image=_image(96, 64, 0), height=64, width=96, latents=z, output_type="np",
                                num_inference_steps=2, guidance_scale=1.0).images
    assert got.shape == (1, 64, 96, 3)


@pytest.mark.parametrize("which, n, match", [
    ("edit", 2, "at most 1 input image"),
    ("plus", 4, "at most 3 input image"),
    ("edit", 0, "edits an image"),
])
def test_image_count_rules(ours, which, n, match):
    images = [_image(32, 32, i) for i in range(n)] or None
    with pytest.raises(InputError, match=match) as err:
        ours[which].generate(PROMPT, image=images, num_inference_steps=2, output_type="np")
    assert err.value.field == "image" and "\n" not in str(err.value)


def test_detection(folders):
    for key, variant in (("edit", "edit"), ("plus", "edit-plus")):
        mc = detect(folders[key][0])
        assert (mc.family, mc.task, mc.arch.edit) == ("qwen-image", "edit", variant)
        assert mc.files["processor"].endswith("processor")
    assert detect(folders["plus"][0]).defaults.num_inference_steps == 40


def test_a_list_of_images_round_trips_through_json(tmp_path):
    a = tmp_path / "a.png"
    _image(32, 32, 0).save(a)
    p = SamplingParams(prompt="x", image=[str(a), _image(16, 16, 1)])
    back = SamplingParams.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back.image[0] == str(a) and isinstance(back.image[1], bytes) and len(back.image) == 2


def test_cli_edits_with_repeated_image(folders, tmp_path, capsys, monkeypatch):
    """`lightx2v generate --task edit --image a --image b`: two input images, a PNG of the last one's ratio
    at the VAE area (here 64 x 96 pixels: a 64 x 96 image gives 64 x 96); four are refused with one line."""
    from lightx2v.cli.main import main

    v = qwen_image_edit.VARIANTS
    monkeypatch.setitem(v, "edit-plus", dataclasses.replace(v["edit-plus"], vae_area=64 * 96, condition_area=64 * 64))
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    _image(96, 64, 0).save(a)
    _image(64, 96, 1).save(b)
    out = tmp_path / "edited.png"
    argv = ["generate", "--model-path", str(folders["plus"][0]), "--task", "edit", "--prompt", PROMPT,
            "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--seed", "1", "--quiet", "--output", str(out)]
    assert main(argv + ["--image", str(a), "--image", str(b)]) == 0
    with Image.open(out) as im:
        assert im.size == (64, 96)
    capsys.readouterr()
    assert main(argv + ["--image", str(a)] * 4) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at most 3 input image(s), got 4" in err[0]


def test_several_images_per_edit_request_are_refused_in_one_line():
    from lightx2v.config import SamplingParams
    from lightx2v.errors import InputError
    from lightx2v.pipelines.qwen_image_edit import QwenImageEditPipeline

    class _Arch:
        edit = next(iter(__import__("lightx2v.pipelines.qwen_image_edit", fromlist=["VARIANTS"]).VARIANTS))

    class _MC:
        arch = _Arch()

    p = SamplingParams(prompt="x", image=["a.png"], num_images=2)
    with pytest.raises(InputError, match="makes one image per request here") as e:
        QwenImageEditPipeline.check_request(_MC(), p)
    assert e.value.field == "num_images"
