"""Numbers a user gives are finite and in range before anything runs; NaN during a run stops it by name."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from lightx2v import LightX2V
from lightx2v.cli.main import main
from lightx2v.config import SamplingParams
from lightx2v.errors import InputError, NonFiniteError
from lightx2v.loading.convert import convert_dit
from lightx2v.loading.lora import lora_strength, merge_loras_, parse_lora_spec
from lightx2v.pipelines.base import Guidance, denoise
from lightx2v.pipelines.wan import WanPipeline

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("field, value, words", [
    ("guidance_scale", NAN, "guidance_scale must be a finite number, got nan"),
    ("guidance_scale", INF, "guidance_scale must be a finite number, got inf"),
    ("guidance_scale", 10**400, "guidance_scale must be a finite number"),
    ("guidance_scale", -0.5, "guidance_scale must be >= 0 and at most 50, got -0.5"),
    ("guidance_scale", 1e6, "guidance_scale must be >= 0 and at most 50, got 1000000.0"),
    ("guidance_scale_2", -INF, "guidance_scale_2 must be a finite number, got -inf"),
    ("shift", NAN, "shift must be a finite number, got nan"),
    ("shift", 0.0, "shift must be > 0 and at most 100, got 0.0"),
    ("shift", 1e9, "shift must be > 0 and at most 100, got 1000000000.0"),
    ("shift", "5", "shift must be a number, got '5'"),
    ("fps", 0, "fps must be an integer from 1 to 1000, got 0"),
    ("fps", 10**12, "fps must be an integer from 1 to 1000"),
    ("height", -16, "height must be a positive integer"),
    ("num_inference_steps", 0, "num_inference_steps must be a positive integer"),
    ("seed", 2**70, "seed must be an integer that fits in 64 bits"),
    ("latents", torch.full((1, 16, 2, 4, 4), NAN), "latents hold 512 NaN or infinite value(s) of 512"),
    ("latents", torch.zeros(1, 16, 2, 4, 4, dtype=torch.int64), "latents must be a floating-point tensor"),
    ("latents", [[0.0]], "latents must be a torch.Tensor, got list"),
    ("output_type", "avi", "unknown output_type 'avi'"),
    ("overwrite", "yes", "overwrite must be true or false"),
])
def test_validate_names_the_field(field, value, words):
    with pytest.raises(InputError) as e:
        SamplingParams(prompt="a fox", **{field: value}).validate()
    assert words in str(e.value) and e.value.field == field


def test_sane_values_pass():
    SamplingParams(prompt="a fox", guidance_scale=0.0, guidance_scale_2=50, shift=100, fps=1000,
                   latents=torch.randn(1, 16, 2, 4, 4)).validate()
    with pytest.raises(InputError) as e:
        SamplingParams(prompt=" ").validate()
    assert e.value.field == "prompt"


@pytest.mark.parametrize("spec, strength", [("a.safetensors", 1.0), ("a.safetensors:0.8", 0.8),
                                            ("dir/a.safetensors:-2.5", -2.5), ("a.safetensors:10", 10.0)])
def test_lora_spec_strengths(spec, strength):
    assert parse_lora_spec(spec)[1] == strength


@pytest.mark.parametrize("tail", ["nan", "inf", "-inf", "1e309", "10.5", "-11", "1e6"])
def test_lora_spec_refuses_nan_and_huge(tail):
    with pytest.raises(InputError, match=rf"LoRA spec 'x.safetensors:{tail}': the strength after ':' must be a finite "
                                         r"number from -10 to 10 \(1.0: the LoRA as trained\)"):
        parse_lora_spec(f"x.safetensors:{tail}")


def test_api_strengths_are_checked_before_loading(tiny_official_dir):
    for bad in (NAN, INF, 100.0, True, "strong"):
        with pytest.raises(InputError, match="LoRA strength must be"):
            LightX2V.from_pretrained(tiny_official_dir, device="cpu", lora=[("missing.safetensors", bad)])
    assert lora_strength("0.5") == 0.5 and lora_strength(-10) == -10.0
    with pytest.raises(InputError, match="LoRA strength must be a finite number"):
        merge_loras_(torch.nn.Linear(2, 2), [(None, NAN)])


def test_convert_refuses_a_nan_strength_before_writing(tiny_official_dir, tmp_path, capsys):
    lora = tmp_path / "l.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.diff_b": torch.ones(64)}, str(lora))
    for spec in (f"{lora}:nan", f"{lora}:1e30"):
        rc = main(["convert", str(tiny_official_dir), str(tmp_path / "out"), "--lora", spec])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "must be a finite number" in err
    with pytest.raises(InputError, match="LoRA strength must be a finite number"):
        convert_dit(tiny_official_dir, tmp_path / "out", loras=[(lora, NAN)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.safetensors"]  # nothing written, no temp folder


class _Sched:
    timesteps = torch.tensor([900.0, 500.0, 100.0])

    def step(self, v, x):
        return x - 0.1 * v


@pytest.mark.parametrize("bad, kind", [(NAN, "NaN"), (INF, "infinite")])
def test_denoise_stops_at_the_step_that_broke(bad, kind):
    seen = []

    def model_fn(x, t, cond, ctx):
        return torch.full_like(x, bad) if ctx.step == 1 else torch.ones_like(x)

    with pytest.raises(NonFiniteError) as e:
        denoise(model_fn, _Sched(), torch.zeros(1, 4), None, None, Guidance(), callback=lambda s: seen.append(s.step),
                progress=False)
    assert str(e.value).startswith(f"denoise step 2 of 3 (timestep 500) produced {kind} latents: ")
    assert "lower guidance scale or LoRA strength" in str(e.value) and e.value.exit_code == 5
    assert seen == [0]  # the callback never sees non-finite latents


@pytest.fixture(scope="module")
def pipe(tiny_official_dir):
    return LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.float32, progress=False)


KW = {"prompt": "a fox", "height": 32, "width": 48, "num_frames": 5, "num_inference_steps": 2, "seed": 0}


def test_nan_from_the_text_encoder_or_the_vae_is_named(pipe, monkeypatch, tmp_path):
    enc = pipe.pipeline.encode_prompt
    monkeypatch.setattr(pipe.pipeline, "encode_prompt", lambda prompts: enc(prompts) * NAN)
    with pytest.raises(NonFiniteError, match=r"^the text encoder produced NaN features \(T5 overflows in fp16\)"):
        pipe.generate(**KW, output_type="latent")
    monkeypatch.undo()
    dec = pipe.pipeline.decode
    monkeypatch.setattr(pipe.pipeline, "decode", lambda latents, **kw: dec(latents, **kw) * NAN)  # kw: the streamed save's
    out = tmp_path / "v.mp4"
    with pytest.raises(NonFiniteError, match="^the VAE decode produced NaN pixels from finite latents"):
        pipe.generate(**KW, output_path=out)
    assert not out.exists()


def test_nan_latents_from_the_user_are_refused(pipe):
    latents = torch.randn(1, 16, 2, 4, 6)
    latents[0, 0, 0, 0, 0] = NAN
    with pytest.raises(InputError, match=r"latents hold 1 NaN or infinite value\(s\) of 768") as e:
        pipe.generate(**KW, latents=latents, output_type="latent")
    assert e.value.field == "latents"


@pytest.fixture(scope="module")
def nan_dir(tiny_official_dir, tmp_path_factory):
    """The tiny checkpoint with one NaN in the DiT's head: every step's output is NaN."""
    root = tmp_path_factory.mktemp("nan") / "Wan2.1-T2V-tiny"
    shutil.copytree(tiny_official_dir, root)
    f = root / "diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    sd["head.head.weight"][0, 0] = NAN
    save_file(sd, str(f))
    return root


def _gen(model, out, *extra):
    return ["generate", "--model-path", str(model), "--prompt", "a fox", "--size", "48x32", "--frames", "5",
            "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--quiet", "--output", str(out), *extra]


def test_cli_a_nan_checkpoint_stops_at_step_1_with_exit_5(nan_dir, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert main(_gen(nan_dir, out)) == 5
    err = capsys.readouterr().err
    assert err.startswith("lightx2v: error: denoise step 1 of 2 (timestep ") and "produced NaN latents" in err
    assert err.count("\n") == 1 and not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag, value, words", [
    ("--guidance", "nan", "finite number, got nan"), ("--guidance", "inf", "finite number, got inf"),
    ("--guidance", "1e6", ">= 0 and at most 50"), ("--shift", "nan", "finite number, got nan"),
    ("--shift", "1e9", "> 0 and at most 100"), ("--lora", "x.safetensors:nan", "finite number from -10 to 10"),
])
def test_cli_nan_and_huge_numbers_exit_2_before_loading(tiny_official_dir, tmp_path, capsys, monkeypatch, flag,
                                                        value, words):
    monkeypatch.setattr(WanPipeline, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "v.mp4"
    assert main(_gen(tiny_official_dir, out, flag, value)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lightx2v: error: ") and words in err
    assert not out.exists()
