"""Shared fixtures: one tiny random Wan2.1 T2V model, written in both on-disk layouts.

The diffusers layout is written by diffusers itself (`WanPipeline.save_pretrained`), so its file
and key names are the real ones; the official layout is the same weights renamed to the official
keys (our rename tables, inverted) and saved under the official Wan-AI file names. Both therefore
hold identical weights, and each test can compare against diffusers' own pipeline.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

# Without a GPU our Triton kernels run in Triton's interpreter (read when a kernel is defined, so
# before any test imports lightx2v.ops.triton); on a GPU machine they compile for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lightx2v.models.wan.tiny import randomize_

TEXT_DIM = 32
HEIGHT, WIDTH, FRAMES = 64, 64, 9


def _tiny_components(tok_dir: Path):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    from lightx2v.models.wan.vae import tiny_vae_config

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_heads=4,
                                     num_layers=2, relative_attention_num_buckets=32,
                                     relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                                     dense_act_fn="gelu_new", is_encoder_decoder=False, tie_word_embeddings=False))
    dit = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16,
                                out_channels=16, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=128, num_layers=2,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    v = tiny_vae_config()
    vae = AutoencoderKLWan(base_dim=v.dim, z_dim=v.z_dim, dim_mult=list(v.dim_mult), num_res_blocks=v.num_res_blocks,
                           attn_scales=list(v.attn_scales), temperal_downsample=list(v.temperal_downsample),
                           latents_mean=list(v.latents_mean), latents_std=list(v.latents_std))
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    num_train_timesteps=1000, flow_shift=3.0)
    for i, m in enumerate((t5, dit, vae)):
        randomize_(m, seed=10 + i)
    return tokenizer, t5.eval(), dit.eval(), vae.eval(), sched


@pytest.fixture(scope="session")
def tiny_diffusers_dir(tmp_path_factory) -> Path:
    from diffusers import WanPipeline

    from lightx2v.models.wan.tokenizer import build_tiny_tokenizer

    root = tmp_path_factory.mktemp("wan-diffusers")
    tok_dir = build_tiny_tokenizer(root / "_tok")
    tokenizer, t5, dit, vae, sched = _tiny_components(tok_dir)
    WanPipeline(tokenizer=tokenizer, text_encoder=t5, transformer=dit, vae=vae, scheduler=sched).save_pretrained(root / "model")
    return root / "model"


def _official_from_diffusers(src: Path, dst: Path) -> Path:
    from safetensors.torch import load_file, save_file

    from lightx2v.loading.state_dict import rename
    from lightx2v.models.wan.dit import dit_key_from_diffusers
    from lightx2v.models.wan.t5 import t5_key_from_transformers
    from lightx2v.models.wan.vae import vae_key_from_diffusers

    dst.mkdir(parents=True)
    dit = rename(load_file(src / "transformer" / "diffusion_pytorch_model.safetensors"), dit_key_from_diffusers)
    save_file({k: v.contiguous() for k, v in dit.items()}, str(dst / "diffusion_pytorch_model.safetensors"))
    tcfg = json.loads((src / "transformer" / "config.json").read_text())
    heads, hd = tcfg["num_attention_heads"], tcfg["attention_head_dim"]
    (dst / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v", "text_len": 512,
        "in_dim": tcfg["in_channels"], "dim": heads * hd, "ffn_dim": tcfg["ffn_dim"], "freq_dim": tcfg["freq_dim"],
        "text_dim": tcfg["text_dim"], "out_dim": tcfg["out_channels"], "num_heads": heads,
        "num_layers": tcfg["num_layers"], "eps": tcfg["eps"]}))
    t5 = rename(load_file(src / "text_encoder" / "model.safetensors"), t5_key_from_transformers)
    torch.save(t5, dst / "models_t5_umt5-xxl-enc-bf16.pth")
    vae = rename(load_file(src / "vae" / "diffusion_pytorch_model.safetensors"), vae_key_from_diffusers)
    torch.save(vae, dst / "Wan2.1_VAE.pth")
    shutil.copytree(src / "tokenizer", dst / "google" / "umt5-xxl")
    return dst


@pytest.fixture(scope="session")
def tiny_official_dir(tiny_diffusers_dir, tmp_path_factory) -> Path:
    return _official_from_diffusers(tiny_diffusers_dir, tmp_path_factory.mktemp("wan-official") / "Wan2.1-T2V-tiny")


@pytest.fixture(scope="session")
def tiny_latents() -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8, generator=g)


# ---- Wan2.2: tiny T2V-A14B / I2V-A14B / TI2V-5B, each as (diffusers_dir, official_dir) (tests/wan22_fixtures.py)


@pytest.fixture(scope="session")
def wan22_t2v_dirs(tmp_path_factory) -> tuple[Path, Path]:
    from tests.wan22_fixtures import write_wan22

    return write_wan22(tmp_path_factory.mktemp("wan22-t2v"), "t2v")


@pytest.fixture(scope="session")
def wan22_i2v_dirs(tmp_path_factory) -> tuple[Path, Path]:
    from tests.wan22_fixtures import write_wan22

    return write_wan22(tmp_path_factory.mktemp("wan22-i2v"), "i2v")


@pytest.fixture(scope="session")
def wan22_ti2v_dirs(tmp_path_factory) -> tuple[Path, Path]:
    from tests.wan22_fixtures import write_wan22

    return write_wan22(tmp_path_factory.mktemp("wan22-ti2v"), "ti2v")


# ---- Qwen-Image: one tiny random text-to-image folder and diffusers' pipeline on it (tests/qwen_image_fixtures.py)


@pytest.fixture(scope="session")
def qwen_image_t2i(tmp_path_factory):
    """(model_dir, diffusers QwenImagePipeline on the same weights)."""
    pytest.importorskip("diffusers")
    from tests.qwen_image_fixtures import write_qwen_image

    return write_qwen_image(tmp_path_factory.mktemp("qwen_image"))
