"""SamplingParams: no family geometry, image requests, and a JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lightx2v import LightX2V
from lightx2v.config import SamplingParams
from lightx2v.errors import InputError


def test_json_round_trip_is_exact(tmp_path):
    rgb = (np.arange(8 * 6 * 3) % 251).astype(np.uint8).reshape(8, 6, 3)
    latents = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    p = SamplingParams(prompt="a crab", negative_prompt="blur", image=Image.fromarray(rgb), last_image=str(tmp_path / "b.png"),
                       height=96, width=160, num_frames=9, num_inference_steps=7, guidance_scale=4.5,
                       guidance_scale_2=3.0, shift=2.0, solver="euler", seed=2**40, latents=latents,
                       output_type="np", fps=24, callback=print)
    text = json.dumps(p.to_dict())
    back = SamplingParams.from_dict(json.loads(text))
    assert back.callback is None and back.last_image == str(tmp_path / "b.png")
    assert isinstance(back.image, bytes)
    assert np.array_equal(np.asarray(Image.open(__import__("io").BytesIO(back.image)).convert("RGB")), rgb)  # lossless
    assert torch.equal(back.latents, latents)
    for name in ("prompt", "negative_prompt", "height", "width", "num_frames", "num_inference_steps",
                 "guidance_scale", "guidance_scale_2", "shift", "solver", "seed", "output_type", "fps"):
        assert getattr(back, name) == getattr(p, name), name
    again = back.to_dict()
    first = json.loads(text)
    assert again.pop("image") == {"bytes": first.pop("image")["png"]}  # the same PNG bytes, now as an encoded file
    assert again == first


def test_from_dict_names_what_is_wrong():
    with pytest.raises(InputError, match="unknown request field\\(s\\) steps"):
        SamplingParams.from_dict({"prompt": "x", "steps": 4})
    with pytest.raises(InputError, match="a request needs a prompt"):
        SamplingParams.from_dict({"height": 480})
    with pytest.raises(InputError, match="latents data holds 3 values, shape \\[2, 2\\] needs 4"):
        SamplingParams.from_dict({"prompt": "x", "latents": {"dtype": "float32", "shape": [2, 2],
                                                             "data": "AAAAAAAAAAAAAAAA"}})


def test_geometry_is_the_familys():
    SamplingParams(prompt="x", height=100, width=70, num_frames=6).validate()  # no family: any positive size
    with pytest.raises(InputError, match="height must be a positive integer"):
        SamplingParams(prompt="x", height=0).validate()
    with pytest.raises(InputError, match="output_type 'png' is one image: num_frames must be 1"):
        SamplingParams(prompt="x", num_frames=5, output_type="png").validate()


def test_the_family_checks_its_geometry(tiny_official_dir):
    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)
    with pytest.raises(InputError, match="height must be a positive multiple of 16"):
        pipe.generate(prompt="x", height=40, width=32, num_frames=5, output_type="latent")
    with pytest.raises(InputError, match="num_frames must be 4k\\+1"):
        pipe.generate(prompt="x", height=32, width=32, num_frames=6, output_type="latent")


def test_an_image_request_writes_one_png(tiny_official_dir, tmp_path):
    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)
    kw = dict(prompt="a lighthouse", height=32, width=48, num_frames=1, num_inference_steps=2, seed=4)
    frames = pipe.generate(output_type="np", **kw).frames
    assert frames.shape == (1, 32, 48, 3)
    result = pipe.run({**kw, "output_type": "png", "output_path": str(tmp_path / "out.png")})
    assert result.path == str(tmp_path / "out.png") and sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "out.png.json"]
    png = np.asarray(Image.open(result.path))
    assert png.shape == (32, 48, 3)
    assert np.array_equal(png, (np.clip(frames[0], 0, 1) * 255 + 0.5).astype(np.uint8))
