"""Before any model: `--help` and `--version` without torch, the package's lazy names, the name lists
the help shows (they must be what runs), and the device choice (one line naming what this machine has)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightx2v.cli.main import main
from lightx2v.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
_PROBE = """
import sys
from lightx2v.cli.main import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
print("TORCH-IMPORTED" if "torch" in sys.modules else "NO-TORCH", code, file=sys.stderr)
"""


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


@pytest.mark.parametrize("argv, shows", [
    (["--help"], "generate"), (["generate", "--help"], "{unipc,dpm++,euler,distill}"), (["--version"], "lightx2v 0.1.0"),
    (["info", "--help"], "LoRA file"), (["convert", "--help"], "{official,diffusers,blocks}"),
])
def test_help_and_version_do_not_import_torch(argv, shows):
    proc = _run_python(_PROBE.format(argv=argv))
    assert proc.stderr.strip().splitlines()[-1] == "NO-TORCH 0", proc.stderr
    assert shows in proc.stdout


def test_generate_help_offers_the_registered_choices():
    proc = _run_python(_PROBE.format(argv=["generate", "--help"]))
    text = " ".join(proc.stdout.split())
    assert "{t2v,i2v,flf2v,ti2v,t2i,edit}" in text and "wan2.1-i2v-480p-distill" in text and "sage_attn" in text
    assert "wan2.2-i2v-a14b-distill" in text and "--dit-path-2" in text


def test_import_is_cheap_and_the_public_names_still_import():
    proc = _run_python("import sys, lightx2v\n"
                       "print('torch' in sys.modules, sorted(n for n in dir(lightx2v) if not n.startswith('_')))\n"
                       "from lightx2v import LightX2V, GenerationResult\n"
                       "print('torch' in sys.modules, LightX2V.__module__, GenerationResult.__module__)")
    assert proc.stdout.splitlines() == ["False ['GenerationResult', 'LightX2V']",
                                        "True lightx2v.api lightx2v.pipelines.base"], proc.stderr
    import lightx2v

    with pytest.raises(AttributeError, match="no attribute 'Pipeline'"):
        lightx2v.Pipeline  # noqa: B018


def test_name_lists_are_what_runs():
    from lightx2v import choices
    from lightx2v.models import registry
    from lightx2v.ops.attention import AUTO_ORDER, list_backends
    from lightx2v.schedulers import SOLVER_NAMES, make_scheduler

    assert tuple(list_backends()) == choices.ATTENTION_BACKENDS
    assert set(choices.QUANTIZED_ATTENTION) <= set(choices.ATTENTION_BACKENDS)
    assert not set(choices.QUANTIZED_ATTENTION) & set(AUTO_ORDER)  # auto stays lossless
    assert SOLVER_NAMES == choices.SOLVER_NAMES and all(make_scheduler(s) for s in SOLVER_NAMES)
    spec = registry.get_family("wan2.1")  # registering checked it against its manifest
    assert [m.name for m in registry.manifests()] == ["wan2.1", "wan2.2", "qwen-image", "hunyuanvideo-1.5"]
    for manifest in registry.manifests():
        family = registry.get_family(manifest.name)
        assert (manifest.tasks, manifest.presets) == (family.tasks, family.presets)
    with pytest.raises(ValueError, match=r"its manifest and its spec differ .*tasks \('t2v', 'i2v', 'flf2v'\) vs \('t2v',\)"):
        registry._check_manifest(dataclasses.replace(spec, tasks=("t2v",)))


# ---------------------------------------------------------------- devices


def _has() -> str:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ", ".join(["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n)] if n else []))


@pytest.mark.parametrize("device, expect", [
    ("mps", "device 'mps' is not supported (lightx2v runs on CUDA GPUs and the CPU)"),
    ("meta", "device 'meta' is not supported"), ("xpu", "device 'xpu' is not supported"),
    ("cuda:99", "device 'cuda:99'"), ("gpu", "unknown device 'gpu'; expected auto, cpu, cuda or cuda:N"),
])
def test_device_this_machine_cannot_use(device, expect):
    from lightx2v.config import resolve_device

    with pytest.raises(InputError) as info:
        resolve_device(device)
    assert expect in str(info.value) and f"this machine has: {_has()}" in str(info.value)
    assert info.value.field == "device"


@pytest.mark.parametrize("device", ["mps", "meta", "cuda:7"])
def test_cli_device_is_one_line(device, tiny_official_dir, tmp_path, capsys):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "v.mp4"
    argv = ["generate", "--model-path", str(tiny_official_dir), "--prompt", "a fox", "--size", "48x32",
            "--frames", "5", "--steps", "1", "--device", device, "--quiet", "--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lightx2v: error: device '{device}'") and "this machine has: cpu" in err
    assert not out.exists()


def test_auto_without_cuda_warns_once(tiny_official_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "v.mp4"
    argv = ["generate", "--model-path", str(tiny_official_dir), "--prompt", "a fox", "--size", "48x32", "--frames",
            "5", "--steps", "1", "--device", "auto", "--dtype", "fp32", "--quiet", "--seed", "1", "--output", str(out)]
    assert main(argv) == 0 and out.is_file()
    err = capsys.readouterr().err
    assert err.count("lightx2v: warning: no CUDA device found; running on the CPU (slow)") == 1, err
