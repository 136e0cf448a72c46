"""Layout detection, shape-inferred configs, sharded files and the Hugging Face cache path."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lightx2v import LightX2V
from lightx2v.errors import CheckpointError, InputError
from lightx2v.loading.detect import detect


def test_detect_both_layouts(tiny_official_dir, tiny_diffusers_dir):
    a, b = detect(tiny_official_dir), detect(tiny_diffusers_dir)
    assert (a.layout, b.layout) == ("official", "diffusers")
    assert a.dit == b.dit
    assert a.arch.text_encoder == b.arch.text_encoder  # official: read off the .pth tensors; diffusers: config.json
    assert a.arch.vae == b.arch.vae                    # official: read off Wan2.1_VAE.pth; diffusers: vae/config.json
    assert a.defaults.convention == "official" and b.defaults.convention == "diffusers"
    assert a.defaults.negative_prompt.startswith("色调艳丽")


def test_sharded_dit_with_index(tiny_official_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    dst = tmp_path / "sharded"
    shutil.copytree(tiny_official_dir, dst)
    sd = load_file(dst / "diffusion_pytorch_model.safetensors")
    (dst / "diffusion_pytorch_model.safetensors").unlink()
    keys = sorted(sd)
    halves = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in halves.items():
        save_file({k: sd[k] for k in ks}, str(dst / name))
    (dst / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, ks in halves.items() for k in ks}}))
    mc = detect(dst)
    assert [p.rsplit("/", 1)[-1] for p in mc.files["dit"]] == sorted(halves)
    a = LightX2V.from_pretrained(dst, device="cpu", dtype="fp32", progress=False)
    b = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype="fp32", progress=False)
    for (k, v), (k2, v2) in zip(a.pipeline.dit.state_dict().items(), b.pipeline.dit.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    (dst / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="00002-of-00002.safetensors listed in .* is missing"):
        detect(dst)


def test_repo_id_resolves_through_hf_cache(tiny_official_dir, tmp_path):
    """A path that is not a folder is a repo id; offline, it is found in a cache laid out as huggingface_hub does."""
    cache = tmp_path / "hub"
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--Wan-AI--Wan2.1-T2V-tiny"
    shutil.copytree(tiny_official_dir, repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    pipe = LightX2V.from_pretrained("Wan-AI/Wan2.1-T2V-tiny", device="cpu", dtype="fp32", cache_dir=cache,
                                    local_files_only=True, progress=False)
    assert pipe.model_config.root == repo / "snapshots" / sha
    with pytest.raises(CheckpointError, match="could not fetch Wan-AI/absent"):
        LightX2V.from_pretrained("Wan-AI/absent", device="cpu", cache_dir=cache, local_files_only=True)


def test_i2v_checkpoint_without_clip_file_names_it(tiny_official_dir, tmp_path):
    dst = tmp_path / "i2v"
    shutil.copytree(tiny_official_dir, dst)
    from safetensors.torch import save_file

    from lightx2v.models.wan.dit import WanDiTConfig, WanModel

    cfg = json.loads((dst / "config.json").read_text())
    i2v = WanDiTConfig.from_official({**cfg, "model_type": "i2v", "in_dim": 36})
    save_file({k: v.contiguous() for k, v in WanModel(i2v).state_dict().items()},
              str(dst / "diffusion_pytorch_model.safetensors"))  # real i2v weights (img_emb, k_img ...)
    (dst / "config.json").write_text(json.dumps(i2v.to_official()))
    with pytest.raises(CheckpointError, match="CLIP image encoder not found: expected .*models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth in the official layout"):
        detect(dst)


def test_api_validation_errors(tiny_official_dir):
    pipe = LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype="fp32", progress=False)
    with pytest.raises(InputError, match="unknown solver 'heun'"):
        pipe.generate(prompt="x", solver="heun", output_type="latent")
    with pytest.raises(InputError, match="latents must have shape"):
        pipe.generate(prompt="x", height=32, width=32, num_frames=5, latents=torch.zeros(1, 16, 2, 3, 3), output_type="latent")
    with pytest.raises(InputError, match="unknown output_type"):
        pipe.generate(prompt="x", output_type="avi")
    with pytest.raises(InputError, match="unknown dtype"):
        LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype="int3")


def test_torch_files_legacy_and_corrupt(tmp_path):
    from lightx2v.loading.state_dict import read_tensors

    torch.save({"a": torch.arange(3.0)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(read_tensors(tmp_path / "legacy.pth")["a"], torch.arange(3.0))  # no mmap: still read
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot read .*bad.pth as a torch checkpoint .*is the file complete\?$"):
        read_tensors(tmp_path / "bad.pth")
