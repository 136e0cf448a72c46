"""Loading options end to end: --dit-path, LoRA (merged and dynamic), quantization at load, distilled presets."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from lightx2v import LightX2V
from lightx2v.cli.main import main
from lightx2v.errors import CheckpointError, InputError

PROMPT = "a boat on a lake"
KW = dict(prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=2, seed=3, output_type="latent")


def _load(path, **kw):
    return LightX2V.from_pretrained(path, device="cpu", dtype=torch.float32, progress=False, **kw)


def _write_lora(path, rank=4, seed=0, extra=None):
    """An official-keys LoRA (diffusion_model. prefix, lora_down/up + alpha) on two layers per block."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for b in (0, 1):
        for mod, (out, inp) in {"self_attn.q": (64, 64), "ffn.0": (128, 64), "cross_attn.k": (64, 64)}.items():
            key = f"diffusion_model.blocks.{b}.{mod}"
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, inp, generator=g) * 0.3
            sd[f"{key}.lora_up.weight"] = torch.randn(out, rank, generator=g) * 0.3
            sd[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
    sd.update(extra or {})
    save_file(sd, str(path))
    return path


def test_dit_path_comfyui_file_equals_folder(tiny_official_dir, tmp_path):
    sd = load_file(tiny_official_dir / "diffusion_pytorch_model.safetensors")
    comfy = tmp_path / "wan_comfy.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in sd.items()}, str(comfy))
    base = _load(tiny_official_dir).generate(**KW).latents
    other = _load(tiny_official_dir, dit_path=comfy)
    assert other.model_config.dit_source.key_format == "comfyui"
    assert torch.allclose(other.generate(**KW).latents, base, atol=1e-6, rtol=0)


def test_dit_path_of_another_size_is_refused(tiny_official_dir, tmp_path):
    sd = load_file(tiny_official_dir / "diffusion_pytorch_model.safetensors")
    bad = tmp_path / "other.safetensors"
    save_file({k: v for k, v in sd.items() if not k.startswith("blocks.1.")}, str(bad))
    with pytest.raises(CheckpointError, match="1 layers"):
        _load(tiny_official_dir, dit_path=bad)


def test_lora_merged_dynamic_and_cli(tiny_official_dir, tmp_path):
    a, b = _write_lora(tmp_path / "a.safetensors", seed=1), _write_lora(tmp_path / "b.safetensors", seed=2)
    base = _load(tiny_official_dir).generate(**KW).latents
    merged_a = _load(tiny_official_dir, lora=[(a, 1.0)]).generate(**KW).latents
    merged_ab = _load(tiny_official_dir, lora=[(a, 1.0), (b, 0.5)]).generate(**KW).latents
    assert (merged_a - base).abs().max() > 1e-3
    pipe = _load(tiny_official_dir, lora=[(a, 1.0)], lora_mode="dynamic")
    assert torch.allclose(pipe.generate(**KW).latents, merged_a, atol=1e-5)
    pipe.set_lora([(a, 1.0), (b, 0.5)])
    assert torch.allclose(pipe.generate(**KW).latents, merged_ab, atol=1e-5)
    pipe.set_lora([])
    assert torch.allclose(pipe.generate(**KW).latents, base, atol=1e-6)
    # the CLI merges --lora FILE:STRENGTH
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model-path", str(tiny_official_dir), "--prompt", PROMPT, "--size", "48x32",
                 "--frames", "5", "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--quiet",
                 "--lora", f"{a}:0.7", "--output", str(out)]) == 0
    assert out.is_file()


def test_lora_unmatched_keys_error_or_warn(tiny_official_dir, tmp_path, capsys):
    bad = _write_lora(tmp_path / "bad.safetensors", extra={
        "diffusion_model.blocks.7.self_attn.q.lora_down.weight": torch.zeros(4, 64),
        "diffusion_model.blocks.7.self_attn.q.lora_up.weight": torch.zeros(64, 4)})
    with pytest.raises(CheckpointError, match="blocks.7.self_attn.q"):
        _load(tiny_official_dir, lora=[(bad, 1.0)])
    with pytest.warns(UserWarning, match="blocks.7.self_attn.q"):
        _load(tiny_official_dir, lora=[(bad, 1.0)], lora_allow_unmatched=True)
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model-path", str(tiny_official_dir), "--prompt", PROMPT, "--size", "48x32",
                 "--frames", "5", "--device", "cpu", "--lora", f"{bad}:x", "--output", str(out)]) == 2
    assert "strength after ':' must be a number" in capsys.readouterr().err and not out.exists()


def test_quant_at_load_close_to_float(tiny_official_dir):
    from lightx2v.quant.base import QuantLinear

    base = _load(tiny_official_dir).generate(**KW).latents
    pipe = _load(tiny_official_dir, quant="w8a8-int8")
    assert isinstance(pipe.pipeline.dit.blocks[0].self_attn.q, QuantLinear)
    assert pipe.pipeline.dit.blocks[0].self_attn.q.weight.dtype == torch.int8
    q = pipe.generate(**KW).latents
    rel = float((q - base).norm() / base.norm())
    assert 0 < rel < 0.05
    with pytest.raises(InputError, match="w4"):
        _load(tiny_official_dir, quant="w4")


def test_distilled_layout_gets_4_step_defaults(tiny_official_dir, tmp_path):
    dst = tmp_path / "distilled"
    shutil.copytree(tiny_official_dir, dst)
    (dst / "distill_models").mkdir()
    shutil.copy(dst / "diffusion_pytorch_model.safetensors", dst / "distill_models" / "distill_model.safetensors")
    pipe = _load(dst)
    d = pipe.model_config.defaults
    assert (d.solver, d.num_inference_steps, d.guidance_scale, d.shift) == ("distill", 4, 1.0, 5.0)
    assert pipe.model_config.dit_source is not None  # the distilled weights replace the base DiT
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no CFG warning at the default guidance 1
        pipe.generate(prompt=PROMPT, height=32, width=48, num_frames=5, seed=0, output_type="latent",
                      callback=lambda i: seen.append(round(i.timestep, 2)))
    assert seen == [1000.0, 937.5, 833.33, 625.0]
    with pytest.warns(UserWarning, match="distilled without CFG"):
        pipe.generate(prompt=PROMPT, height=32, width=48, num_frames=5, guidance_scale=5.0, output_type="latent")
    info = json.loads(_info_json(dst))
    assert "distill_models/distill_model.safetensors" in info["distill"]["evidence"]


def _info_json(path):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["info", str(path), "--json"]) == 0
    return buf.getvalue()


def test_info_on_a_dit_file(tiny_official_dir):
    info = json.loads(_info_json(tiny_official_dir / "diffusion_pytorch_model.safetensors"))
    assert (info["kind"], info["key_format"], info["quant"]) == ("single-file", "official", None)
    assert info["config"]["dim"] == 64


def test_cli_prints_library_warnings_as_one_line(tiny_official_dir, tmp_path, capsys):
    dst = tmp_path / "distilled"
    shutil.copytree(tiny_official_dir, dst)
    (dst / "distill_models").mkdir()
    shutil.copy(dst / "diffusion_pytorch_model.safetensors", dst / "distill_models" / "distill_model.safetensors")
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model-path", str(dst), "--prompt", PROMPT, "--size", "48x32", "--frames", "5",
                 "--device", "cpu", "--dtype", "fp32", "--guidance", "4", "--quiet", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "warning" in ln]
    assert lines and lines[0].startswith("lightx2v: warning: guidance_scale 4 with a step-distilled model")
    assert "UserWarning" not in err and ".py:" not in err


def test_numpy_integers_are_accepted(tiny_official_dir):
    import numpy as np

    a = _load(tiny_official_dir).generate(**{**KW, "height": np.int64(32), "width": np.int32(48), "num_frames": np.int64(5)})
    assert a.latents.shape == (1, 16, 2, 4, 6)
