"""Issue 8, items 7 and 10: every check the request and the detected config allow happens before
any weight is read; errors name the flag the user typed; --config supplies any flag; --json."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from lightx2v.api import LightX2V
from lightx2v.cli.main import main
from tests.pipelines.test_wan_i2v import _to_official, _write_i2v


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if the CLI gets as far as reading weights."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr(LightX2V, "from_model_config", classmethod(refuse))


@pytest.fixture(scope="module")
def i2v_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("late-i2v")
    return _to_official(_write_i2v(root, False), root / "official", False)


def _args(model, out, *extra):
    return ["generate", "--model-path", str(model), "--prompt", "a red fox in the snow", "--size", "48x32",
            "--frames", "5", "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--quiet", "--seed", "1",
            "--output", str(out), *extra]


def _png(path, size=(96, 64)):
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return str(path)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("lightx2v: error: "), err
    return err


def _distilled(tiny_official_dir, tmp_path):
    dst = tmp_path / "distilled"
    shutil.copytree(tiny_official_dir, dst)
    (dst / "distill_models").mkdir()
    shutil.copy(dst / "diffusion_pytorch_model.safetensors", dst / "distill_models" / "distill_model.safetensors")
    return dst


@pytest.mark.parametrize("case, expect", [
    ("image_on_t2v", "text-to-video checkpoint: it takes no image"),
    ("shift_zero", "--shift must be > 0"),
    ("steps_zero", "--steps must be a positive integer, got 0"),
    ("frames", "--frames must be 4k+1"),
    ("distilled_steps", "num_inference_steps must be 4, got 3"),
    ("task", "--task i2v does not fit this checkpoint"),
    ("missing_lora", "LoRA file not found"),
])
def test_t2v_checks_before_any_weight_is_read(case, expect, tiny_official_dir, tmp_path, capsys, no_load):
    model, extra = tiny_official_dir, []
    if case == "image_on_t2v":
        extra = ["--image", _png(tmp_path / "a.png")]
    elif case == "shift_zero":
        extra = ["--shift", "0"]
    elif case == "steps_zero":
        extra = ["--steps", "0"]
    elif case == "frames":
        extra = ["--frames", "8"]
    elif case == "distilled_steps":
        model = _distilled(tiny_official_dir, tmp_path)
        extra = ["--steps", "3"]
    elif case == "task":
        extra = ["--task", "i2v"]
    elif case == "missing_lora":
        extra = ["--lora", str(tmp_path / "nope.safetensors")]
    out = tmp_path / "v.mp4"
    assert main(_args(model, out, *extra)) == 2
    assert expect in _one_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("case, expect", [
    ("no_image", "image-to-video checkpoint: give an image"),
    ("last_image", "takes one image; first-last-frame needs"),
    ("small_image", "image is 40x24, smaller than the"),
    ("missing_image", "image file not found"),
])
def test_i2v_checks_before_any_weight_is_read(case, expect, i2v_dir, tmp_path, capsys, no_load):
    extra = []
    if case == "last_image":
        extra = ["--image", _png(tmp_path / "a.png"), "--last-image", _png(tmp_path / "b.png")]
    elif case == "small_image":
        extra = ["--image", _png(tmp_path / "s.png", (40, 24))]
    elif case == "missing_image":
        extra = ["--image", str(tmp_path / "gone.png")]
    args = _args(i2v_dir, tmp_path / "v.mp4", *extra)
    args[args.index("--size") + 1] = "96x64"
    assert main(args) == 2
    assert expect in _one_line(capsys)


def test_config_supplies_model_path_prompt_and_one_lora_string(tiny_official_dir, tmp_path, capsys, no_load):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model_path": str(tiny_official_dir), "prompt": "a fox", "size": "48x32",
                               "frames": 5, "device": "cpu", "lora": str(tmp_path / "missing.safetensors")}))
    # everything comes from the file; the single LoRA string is one file, not its characters
    assert main(["generate", "--config", str(cfg), "--quiet"]) == 2
    assert f"LoRA file not found: {tmp_path / 'missing.safetensors'}" in _one_line(capsys)


@pytest.mark.parametrize("values, expect", [
    ({"steps": "many"}, "'steps' must be an integer, got 'many'"),
    ({"steps": 2.5}, "'steps' must be an integer, got 2.5"),
    ({"guidance": [1]}, "'guidance' must be a number"),
    ({"lora": [1, 2]}, "'lora' must be a string or a list of strings"),
    ({"compile": "yes"}, "'compile' must be true or false"),
    ({"solver": "heun"}, "'solver' must be one of"),
    ({}, "--model-path is required"),
])
def test_config_values_checked_like_flags(values, expect, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(values))
    assert main(["generate", "--config", str(cfg), "--prompt", "x"]) == 2
    assert expect in _one_line(capsys)


def test_json_result_and_summary_line(tiny_official_dir, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    args = [a for a in _args(tiny_official_dir, out, "--json") if a != "--quiet"]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["path"] == str(out) and result["seed"] == 1 and out.is_file()
    assert result["stats"]["model_calls"] == 4  # 2 steps x CFG (guidance 5)
    assert {"denoise", "vae_decode", "total"} <= set(result["timings"])
    s = result["settings"]
    assert (s["num_inference_steps"], s["width"], s["height"], s["num_frames"], s["guidance_scale"]) == (2, 48, 32, 5, 5.0)
    summary = [line for line in captured.err.splitlines() if line.startswith("lightx2v: Wan2.1 t2v")]
    assert len(summary) == 1 and "on cpu, float32, attention" in summary[0] and "2 steps" in summary[0], captured.err


def test_long_prompt_warns_how_many_tokens_were_dropped(tiny_official_dir, tmp_path, capsys):
    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype="fp32", progress=False)
    limit = pipe.model_config.dit.text_len
    with pytest.warns(UserWarning, match=r"the prompt is longer than the text encoder reads \(\d+ tokens\): its last \d+ token"):
        pipe.generate(prompt="cat " * (limit + 20), height=32, width=48, num_frames=1, num_inference_steps=1,
                      output_type="latent", guidance_scale=1.0)
    dropped = pipe.pipeline.tokenizer.dropped_tokens(["cat " * (limit + 20), "a cat"])
    assert dropped == [limit + 20 - (limit - 1), 0]  # limit - 1 tokens kept, plus </s>


def test_cfg_mode_batched_from_the_cli_matches_sequential(tiny_official_dir, tmp_path, capsys):
    runs = {}
    for mode in ("sequential", "batched"):
        out = tmp_path / f"{mode}.mp4"
        assert main(_args(tiny_official_dir, out, "--cfg-mode", mode, "--json")) == 0
        runs[mode] = json.loads(capsys.readouterr().out)
    assert runs["sequential"]["stats"]["model_calls"] == 4 and runs["batched"]["stats"]["model_calls"] == 2
    assert runs["batched"]["stats"]["model_samples"] == 4
