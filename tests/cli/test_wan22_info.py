"""`lightx2v info` on Wan2.2 folders (both experts, the boundary), and --dit-path-2 on the command line."""

from __future__ import annotations

import json
import shutil

from safetensors.torch import load_file, save_file

from lightx2v.cli.main import build_parser, main


def _info(capsys, path) -> tuple[str, dict]:
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert main(["info", str(path), "--json"]) == 0
    return text, json.loads(capsys.readouterr().out)


def test_info_reports_both_experts_and_the_boundary(wan22_t2v_dirs, capsys):
    diffusers_dir, official_dir = wan22_t2v_dirs
    text, info = _info(capsys, official_dir)
    assert (info["family"], info["task"], info["layout"], info["boundary"]) == ("wan2.2", "t2v", "official", 0.875)
    assert list(info["components"]) == ["dit", "dit_2", "text_encoder", "vae"]
    assert len(info["components"]["dit"]["files"]) == 3 and len(info["components"]["dit_2"]["files"]) == 2
    assert info["components"]["dit"]["params"] == info["components"]["dit_2"]["params"] > 0
    assert info["dit"] == info["dit_2"] and info["dit_2"]["model_type"] == "t2v"
    assert (info["defaults"]["guidance_scale"], info["defaults"]["guidance_scale_2"]) == (4.0, 3.0)
    assert "  DiT 2    dim 64, 2 layers" in text
    assert "experts  dit = high noise, dit_2 = low noise; the high-noise expert runs timesteps >= 875 (boundary 0.875)" in text
    assert "high_noise_model/diffusion_pytorch_model-00001-of-00003.safetensors" in text
    assert "low_noise_model/diffusion_pytorch_model-00002-of-00002.safetensors" in text
    assert "guidance 4.0 / 3.0 (high / low noise), shift 12.0, 16 fps" in text
    text, info = _info(capsys, diffusers_dir)
    assert info["layout"] == "diffusers" and "transformer_2/" in info["components"]["dit_2"]["files"][0]
    assert "VAE      Wan2.1 VAE (16 latent channels, 4x8x8)" in text


def test_info_on_ti2v_and_a_distilled_model(wan22_ti2v_dirs, wan22_i2v_dirs, tmp_path, capsys):
    text, info = _info(capsys, wan22_ti2v_dirs[1])
    assert (info["task"], info["boundary"], list(info["components"])) == ("ti2v", None, ["dit", "text_encoder", "vae"])
    assert "dit_2" not in info and "experts" not in info and "DiT 2" not in text
    assert "VAE      Wan2.2 VAE (48 latent channels, 4x16x16)" in text and "50 steps, guidance 5.0, shift 5.0, 24 fps" in text
    root = tmp_path / "Wan2.2-I2V-A14B"
    shutil.copytree(wan22_i2v_dirs[1], root)
    for expert in ("high", "low"):  # LightX2V's layout of the distilled experts
        (root / "distill_models").mkdir(exist_ok=True)
        shutil.copytree(root / f"{expert}_noise_model", root / "distill_models" / f"{expert}_noise_model")
        index = root / "distill_models" / f"{expert}_noise_model" / "diffusion_pytorch_model.safetensors.index.json"
        shards = sorted(index.parent.glob("*-of-*.safetensors"))
        save_file({k: v for s in shards for k, v in load_file(s).items()}, str(index.parent / "distill_model.safetensors"))
        for f in [index, *shards]:
            f.unlink()
    text, info = _info(capsys, root)
    assert info["switch_step"] == 2 and info["distill"]["preset"] == "wan2.2-i2v-a14b-distill"
    assert info["components"]["dit_2"]["files"] == [str(root / "distill_models/low_noise_model/distill_model.safetensors")]
    assert "the high-noise expert runs steps 0-1, then the low-noise expert" in text
    assert "distill (official sigmas), 4 steps, guidance 1.0 / 1.0 (high / low noise), shift 5.0" in text
    assert "step-distilled: LightX2V layout: distill_models/high_noise_model/distill_model.safetensors" in text


def test_generate_flag_dit_path_2(wan22_ti2v_dirs, tmp_path, capsys):
    args = build_parser().parse_args(["generate", "--model-path", "m", "--prompt", "p", "--dit-path-2", "low.safetensors"])
    assert args.dit_path_2 == "low.safetensors"
    out = tmp_path / "v.mp4"
    code = main(["generate", "--model-path", str(wan22_ti2v_dirs[1]), "--prompt", "a fox", "--device", "cpu",
                 "--dit-path-2", str(tmp_path / "low.safetensors"), "--output", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "is a Wan2.2 ti2v model with one DiT" in err, err
    assert not out.exists()
