"""`tiny_vae=` / `--tiny-vae`: a TAEHV file decodes instead of the VAE (lightx2v.models.wan.taehv).

The tiny random Wan2.1 T2V model of tests/conftest.py with random TAEHV files of the released
architecture, in both formats and both kinds (fp16 .pth as taew2_1 ships, fp32 .safetensors
trained weights as lighttaew2_1 ships).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lightx2v import LightX2V
from lightx2v.api import with_tiny_vae
from lightx2v.cli.main import main
from lightx2v.config import EngineConfig, ModelConfig
from lightx2v.errors import CheckpointError, InputError
from lightx2v.io.video import probe_mp4
from lightx2v.loading.detect import detect
from lightx2v.models.wan.taehv import TinyVAE, TinyVAEConfig
from lightx2v.models.wan.tiny import randomize_

KW = dict(prompt="a boat on a lake", height=16, width=32, num_frames=5, num_inference_steps=2, seed=3)


@pytest.fixture(scope="module")
def tae_files(tmp_path_factory):
    """{kind: file}: taew2_1 as fp16 .pth, lighttaew2_1 as fp32 .safetensors; and the weights."""
    root = tmp_path_factory.mktemp("tae")
    model = randomize_(TinyVAE(), seed=7)
    with torch.no_grad():
        model.decoder[22].bias.fill_(0.5)  # pixels mostly inside (0, 1), not all clamped
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({k: v.half() for k, v in sd.items()}, root / "taew2_1.pth")
    save_file(sd, str(root / "light.safetensors"))
    return {"taew2_1": root / "taew2_1.pth", "lighttaew2_1": root / "light.safetensors"}, sd


@pytest.fixture(scope="module")
def full(tiny_official_dir):
    """The same request decoded by the full VAE."""
    return _load(tiny_official_dir).generate(**KW, output_type="np")


def _load(path, **kw):
    return LightX2V.from_pretrained(path, device="cpu", dtype=torch.float32, progress=False, **kw)


def _tiny_decode(sd, kind, latents):
    model = TinyVAE(TinyVAEConfig(kind=kind))
    model.load_state_dict({k: (v.half().float() if kind == "taew2_1" else v) for k, v in sd.items()})
    return model.decode(latents)


@pytest.mark.parametrize("kind", ["taew2_1", "lighttaew2_1"])
def test_generation_decodes_with_the_tiny_vae(kind, tae_files, tiny_official_dir, full):
    files, sd = tae_files
    pipe = _load(tiny_official_dir, tiny_vae=files[kind])
    assert pipe.model_config.tiny_vae.kind == kind  # told from the tensors (fp16 / fp32 trained)
    assert pipe.pipeline.components["vae"] is None  # t2v: the full VAE is not loaded at all
    r = pipe.generate(**KW, output_type="np")
    assert r.frames.shape == full.frames.shape == (5, 16, 32, 3)  # 4k + 1 frames, as the full VAE
    assert torch.equal(r.latents, full.latents)  # only the decode differs
    expect = (_tiny_decode(sd, kind, r.latents)[0].permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1).numpy()
    assert np.abs(r.frames - expect).max() < 1e-5
    assert np.abs(r.frames - full.frames).max() > 0.05  # really another decoder


def test_kind_given_and_vae_dtype(tae_files, tiny_official_dir, full):
    files, sd = tae_files
    pipe = _load(tiny_official_dir, tiny_vae=files["lighttaew2_1"], tiny_vae_kind="taew2_1")
    assert pipe.model_config.tiny_vae.kind == "taew2_1" and pipe.model_config.tiny_vae.reason == "given"
    video = pipe.pipeline.decode(full.latents)  # the pipeline's decode step on the same latents
    model = TinyVAE(TinyVAEConfig(kind="taew2_1"))
    model.load_state_dict(sd)  # the file's fp32 weights, read as taew2_1 reads latents
    assert video.shape == (1, 3, 5, 16, 32) and (video - model.decode(full.latents)).abs().max() < 1e-5
    half = _load(tiny_official_dir, tiny_vae=files["taew2_1"], vae_dtype="bf16")
    assert half.pipeline.components["tiny_vae"].dtype == torch.bfloat16  # the engine's VAE precision applies


def test_image_tasks_keep_the_vae_to_encode(tae_files, tiny_official_dir):
    files, _ = tae_files
    mc = with_tiny_vae(detect(tiny_official_dir), files["taew2_1"])
    vae, tiny = mc.spec.component("vae"), mc.spec.component("tiny_vae")
    assert (vae.needed(mc), tiny.needed(mc)) == (False, True)
    i2v = dataclasses.replace(mc, task="i2v")
    assert (vae.needed(i2v), tiny.needed(i2v)) == (True, True)  # the image is encoded with the full VAE
    assert not tiny.needed(detect(tiny_official_dir))


def test_memory_estimate_counts_the_tiny_vae(tae_files, tiny_official_dir):
    from lightx2v.runtime.memory import weight_bytes

    files, _ = tae_files
    plain = detect(tiny_official_dir)
    mc = with_tiny_vae(plain, files["taew2_1"])
    engine = EngineConfig(device="cpu", dtype=torch.float32)
    weights = weight_bytes(mc, engine)
    assert "vae" not in weights and weights["tiny_vae"] == 11_315_539 * 4  # fp32, as the VAE
    assert "tiny_vae" not in weight_bytes(plain, engine)
    # decode activations: the released VAE's 23.4 KB a pixel of a chunk; the tiny VAE's 2 KB
    from lightx2v.models.wan.vae import WanVAEConfig

    released = {"arch": dataclasses.replace(plain.arch, vae=WanVAEConfig())}
    pixel = {name: m.spec.memory(dataclasses.replace(m, **released), torch.float32).pixel_bytes
             for name, m in (("full", plain), ("tiny", mc))}
    assert pixel == {"full": 61 * 96 * 4, "tiny": 2048}


def test_wrong_file_and_wrong_family_are_refused(tae_files, tiny_official_dir, tmp_path):
    files, sd = tae_files
    bad = tmp_path / "taew2_2.safetensors"  # another latent space: 48 channels
    save_file({**{k: v.half() for k, v in sd.items()}, "decoder.1.weight": torch.zeros(256, 48, 3, 3).half()}, str(bad))
    with pytest.raises(CheckpointError, match=r"is not a Wan2.1 tiny VAE .*48 latent channels: taew2_2"):
        _load(tiny_official_dir, tiny_vae=bad)
    with pytest.raises(InputError, match="tiny_vae_kind is given without a tiny VAE file"):
        _load(tiny_official_dir, tiny_vae_kind="taew2_1")
    # (Wan2.2 and HunyuanVideo-1.5 take tiny VAEs too: tests/pipelines/test_tiny_vae_families.py)
    qwen = ModelConfig(family="qwen-image", task="t2i", layout="diffusers", root=Path("x"), files={}, arch=None)
    with pytest.raises(InputError, match="tiny_vae cannot be used with Qwen-Image t2i models") as info:
        with_tiny_vae(qwen, files["taew2_1"])
    assert info.value.field == "tiny_vae"


def _gen(model, out, *extra):
    return ["generate", "--model-path", str(model), "--prompt", "a red fox in the snow", "--size", "32x16",
            "--frames", "5", "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--quiet", "--seed", "1",
            "--output", str(out), *extra]


def test_cli_tiny_vae(tae_files, tiny_official_dir, tmp_path, capsys):
    files, _ = tae_files
    out = tmp_path / "fox.mp4"
    assert main(_gen(tiny_official_dir, out, "--tiny-vae", str(files["lighttaew2_1"]))) == 0
    assert probe_mp4(out)["frames"] == 5
    meta = json.loads((tmp_path / "fox.mp4.json").read_text())
    assert meta["tiny_vae"] == {"path": str(files["lighttaew2_1"].resolve()), "kind": "lighttaew2_1"}
    capsys.readouterr()
    bad = tmp_path / "notes.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    for extra, expect in ((["--tiny-vae", str(bad)], f"{bad} is not a Wan2.1 tiny VAE"),
                          (["--tiny-vae-kind", "taew2_1"], "--tiny-vae-kind is given without a tiny VAE file")):
        out = tmp_path / "no.mp4"
        assert main(_gen(tiny_official_dir, out, *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("lightx2v: error: ") and expect in err, err
        assert not out.exists()
