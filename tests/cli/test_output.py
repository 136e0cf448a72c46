"""The CLI's outputs: the extension, folders, overwrite, special files, metadata; demo's and
convert's destination folders. One line and exit 2 for every refusal, nothing touched."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lightx2v.cli.main import main
from lightx2v.io.video import probe_mp4, read_metadata


def _gen(model, out, *extra):
    return ["generate", "--model-path", str(model), "--prompt", "a red fox in the snow", "--size", "48x32",
            "--frames", "5", "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--quiet", "--seed", "1",
            "--output", str(out), *extra]


def _one_line(err: str, words: str) -> None:
    err = err.strip()
    assert err.count("\n") == 0 and err.startswith("lightx2v: error: ") and words in err, err


def _tiny_lora(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(4, 64, generator=g),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(64, 4, generator=g)}, str(path))
    return path


def test_a_folder_output_gets_the_default_name_and_the_metadata(tiny_official_dir, tmp_path, capsys):
    folder = tmp_path / "new"
    lora = _tiny_lora(tmp_path / "style.safetensors")
    assert main(_gen(tiny_official_dir, str(folder) + "/", "--lora", f"{lora}:0.5")) == 0
    (video,) = [p for p in folder.iterdir() if p.suffix == ".mp4"]
    assert video.name.startswith("wan_t2v_") and video.name.endswith("_seed1.mp4")
    assert capsys.readouterr().out.strip() == str(video)
    meta = read_metadata(video)
    assert json.loads((folder / (video.name + ".json")).read_text()) == meta
    assert (meta["prompt"], meta["seed"], meta["num_inference_steps"], meta["model"]) == (
        "a red fox in the snow", 1, 2, str(tiny_official_dir))
    assert (meta["width"], meta["height"], meta["num_frames"], meta["fps"], meta["task"]) == (48, 32, 5, 16, "t2v")
    assert meta["lightx2v"] and meta["solver"] and meta["loras"] == [
        {"path": str(lora), "strength": 0.5, "mode": "merged", "dits": ["dit"]}]


@pytest.mark.parametrize("name, words", [("v.avi", "extension '.avi'"), ("v.txt", "extension '.txt'"),
                                         ("v", "no extension"), ("v.png", "--frames 1")])
def test_an_unsupported_extension_is_refused_before_the_model_loads(tmp_path, capsys, name, words):
    # the model folder does not exist: the output is refused first, before any model work
    assert main(_gen(tmp_path / "no-model", tmp_path / name)) == 2
    _one_line(capsys.readouterr().err, words)
    assert list(tmp_path.iterdir()) == []


def test_gif_through_the_cli(tiny_official_dir, tmp_path):
    out = tmp_path / "fox.gif"
    assert main(_gen(tiny_official_dir, out)) == 0
    assert probe_mp4(out)["codec"] == "gif" and json.loads((tmp_path / "fox.gif.json").read_text())["seed"] == 1


def test_existing_output_overwritten_with_a_warning_or_refused(tiny_official_dir, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"keep me")
    assert main(_gen(tiny_official_dir, out, "--no-overwrite")) == 2
    _one_line(capsys.readouterr().err, "exists and overwrite is off (--no-overwrite)")
    assert out.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    assert main(_gen(tiny_official_dir, out)) == 0
    assert f"lightx2v: warning: overwrote the existing file {out}" in capsys.readouterr().err
    assert probe_mp4(out)["frames"] == 5


def test_a_device_and_a_symlink_given_as_output_stay_what_they_are(tiny_official_dir, tmp_path):
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers, in our own folder
    except PermissionError:
        pytest.skip("mknod needs root (CI runs as root)")
    assert main(_gen(tiny_official_dir, null)) == 0
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]
    target = tmp_path / "target.mp4"
    target.write_bytes(b"old")
    link = tmp_path / "link.mp4"
    link.symlink_to(target)
    assert main(_gen(tiny_official_dir, link)) == 0
    assert link.is_symlink() and os.readlink(link) == str(target) and probe_mp4(target)["frames"] == 5


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_demo_refuses_a_model_folder_and_impossible_places(tiny_official_dir, tmp_path, capsys):
    before = _snapshot(tiny_official_dir)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    cases = {
        tiny_official_dir: "is not empty; pass a new or empty folder (nothing was changed)",
        blocker: "exists and is not a folder",
        blocker / "ckpt": "file.txt is a file, not a folder",
        Path("/proc/lightx2v-test/ckpt"): "/proc is not writable",
    }
    for folder, words in cases.items():
        out = tmp_path / "demo.mp4"
        assert main(["demo", "--checkpoint-dir", str(folder), "--output", str(out)]) == 2, folder
        _one_line(capsys.readouterr().err, words)
        assert not out.exists()
    assert _snapshot(tiny_official_dir) == before  # not one file touched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"] and blocker.read_text() == "x"


def test_convert_into_an_impossible_parent_is_one_line(tiny_official_dir, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for dst, words in [(blocker / "out", "file.txt is a file, not a folder"),
                       (Path("/proc/lightx2v-out"), "/proc is not writable"),
                       (tmp_path / "missing" / "out", "does not exist")]:
        assert main(["convert", str(tiny_official_dir), str(dst)]) == 2, dst
        _one_line(capsys.readouterr().err, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
