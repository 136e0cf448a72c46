"""The `lightx2v` command: generate, info, demo, --help, and one clear line for every bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightx2v.cli.main import build_parser, main
from lightx2v.io.video import probe_mp4


def _gen(model, out, *extra):
    return ["generate", "--model-path", str(model), "--prompt", "a red fox in the snow", "--size", "48x32",
            "--frames", "5", "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--quiet", "--seed", "1",
            "--output", str(out), *extra]


def test_generate_writes_valid_mp4(tiny_official_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "fox.mp4"
    assert main(_gen(tiny_official_dir, out)) == 0
    info = probe_mp4(out)
    assert (info["frames"], info["width"], info["height"], info["codec"]) == (5, 48, 32, "h264")
    assert info["fps"] == 16
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["fox.mp4", "fox.mp4.json"]  # no temp file left; the sidecar
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private mode


def test_config_file_values_and_override(tiny_official_dir, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"frames": 9, "fps": 8, "size": "48x32"}))
    out = tmp_path / "c.mp4"
    assert main(_gen(tiny_official_dir, out, "--config", str(cfg), "--frames", "5")) == 0
    info = probe_mp4(out)
    assert info["frames"] == 5 and info["fps"] == 8  # the flag wins over the file; the file fills the rest


def test_help_documents_every_flag_and_default(capsys):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["generate"]
    with pytest.raises(SystemExit):
        sub.parse_args(["--help"])
    text = capsys.readouterr().out
    for action in sub._actions:
        for opt in action.option_strings:
            assert opt in text
    for default in ("auto", "bf16", "area"):
        assert f"(default: {default})" in text
    assert "(default: None)" not in text  # a None default is explained in words (the checkpoint's ...)
    assert "832x480 for Wan2.1, 1280x720 for Wan2.2 A14B" in " ".join(text.split())


def test_info_reports_layout_sizes_dtypes(tiny_official_dir, tiny_diffusers_dir, capsys):
    assert main(["info", str(tiny_official_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["family"], info["task"], info["layout"]) == ("wan2.1", "t2v", "official")
    assert info["components"]["text_encoder"]["files"][0].endswith("models_t5_umt5-xxl-enc-bf16.pth")
    assert info["components"]["vae"]["files"][0].endswith("Wan2.1_VAE.pth")
    assert info["dit"]["dim"] == 64 and info["components"]["dit"]["dtypes"] == {"float32": info["components"]["dit"]["tensors"]}
    assert main(["info", str(tiny_diffusers_dir)]) == 0
    text = capsys.readouterr().out
    assert "layout: diffusers" in text and "unipc" in text and "shift 3.0" in text


def test_demo_writes_video(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    ckpt = tmp_path / "kept"  # a new folder: the tiny checkpoint is kept there
    assert main(["demo", "--output", str(out), "--steps", "2", "--checkpoint-dir", str(ckpt)]) == 0
    assert (ckpt / "config.json").is_file() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    info = probe_mp4(out)
    assert (info["frames"], info["width"], info["height"]) == (17, 256, 144)
    err = capsys.readouterr().err
    assert "RANDOM weights" in err and "`hf download Wan-AI/Wan2.1-T2V-1.3B --local-dir Wan2.1-T2V-1.3B`" in err
    assert "huggingface-cli" not in err  # huggingface_hub 1.x ships `hf`


def _broken(tiny_official_dir, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(tiny_official_dir, dst)
    return dst


def _mismatched(tiny_official_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    dst = _broken(tiny_official_dir, tmp_path, "mismatch")
    f = dst / "diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    sd.pop("blocks.0.self_attn.q.weight")
    sd["blocks.0.extra.weight"] = torch.zeros(1)
    save_file(sd, str(f))
    return dst


@pytest.mark.parametrize("case, expect", [
    ("missing_folder", "model folder not found"),
    ("unknown_layout", "not a model folder we know"),
    ("missing_vae", "Wan2.1_VAE.pth in the official layout"),
    ("mismatch", "missing keys: blocks.0.self_attn.q.weight; unexpected keys: blocks.0.extra.weight"),
    ("size", "width must be a positive multiple of 16"),
    ("frames", "--frames must be 4k+1"),
    ("prompt", "the prompt is empty"),
    ("output_dir", "is not writable"),
    ("config_key", "unknown key 'stepz'"),
])
def test_bad_input_one_line_no_output(case, expect, tiny_official_dir, tmp_path, capsys):
    out = tmp_path / "out" / "v.mp4"
    model = tiny_official_dir
    extra: list = []
    if case == "missing_folder":
        model = tmp_path / "nope"
    elif case == "unknown_layout":
        model = tmp_path / "junk"
        model.mkdir()
        (model / "weights.bin").write_bytes(b"x")
    elif case == "missing_vae":
        model = _broken(tiny_official_dir, tmp_path, "novae")
        (model / "Wan2.1_VAE.pth").unlink()
    elif case == "mismatch":
        model = _mismatched(tiny_official_dir, tmp_path)
    elif case == "size":
        extra = ["--size", "50x32"]
    elif case == "frames":
        extra = ["--frames", "8"]
    elif case == "output_dir":
        blocker = tmp_path / "file.txt"
        blocker.write_text("x")
        out = blocker / "v.mp4"
    elif case == "config_key":
        cfg = tmp_path / "bad.json"
        cfg.write_text('{"stepz": 3}')
        extra = ["--config", str(cfg)]
    args = _gen(model, out, *extra)
    if case == "prompt":
        args[args.index("--prompt") + 1] = "  "
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("lightx2v: error: ") and expect in err, err
    assert not out.exists()
    if out.parent.is_dir():
        assert list(out.parent.iterdir()) == []


def test_cuda_asked_but_missing(tiny_official_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = _gen(tiny_official_dir, tmp_path / "v.mp4")
    args[args.index("--device") + 1] = "cuda"
    assert main(args) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_unknown_solver_rejected_without_traceback(tiny_official_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run([sys.executable, "-m", "lightx2v.cli.main", *_gen(tiny_official_dir, tmp_path / "v.mp4", "--solver", "heun")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "invalid choice: 'heun'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "v.mp4").exists()


def test_compile_vae_flag_compiles_dit_and_vae(tiny_official_dir):
    """--compile-vae is the API's CompileConfig(enabled=True, vae=True) (the measured fastest decode);
    --compile alone leaves the VAE eager."""
    from lightx2v.cli.generate import detect_from_args

    sub = build_parser()
    for flags, dit, vae in ((["--compile-vae"], True, True), (["--compile"], True, False), ([], False, False)):
        args = sub.parse_args(["generate", "--model-path", str(tiny_official_dir), "--prompt", "p", "--device", "cpu",
                               *flags])
        _, engine = detect_from_args(args, progress=False)
        assert (engine.compile.enabled, engine.compile.vae) == (dit, vae), flags
