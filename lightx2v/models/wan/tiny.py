"""Tiny random-weight Wan2.1 checkpoints, written in the real on-disk layouts.

Used by `lightx2v demo` (a generation with no download) and by the tests. The files have the
real names and keys of an official Wan-AI release, so they go through exactly the loading code
a real model does; only the sizes are small and the weights random.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


def tiny_dit_config(text_dim: int = 32):
    from lightx2v.models.wan.dit import WanDiTConfig

    return WanDiTConfig(model_type="t2v", patch_size=(1, 2, 2), text_len=32, in_dim=16, dim=64, ffn_dim=128,
                        freq_dim=32, text_dim=text_dim, out_dim=16, num_heads=2, num_layers=2)


def tiny_t5_config(vocab_size: int):
    from lightx2v.models.wan.t5 import UMT5Config

    return UMT5Config(vocab_size=vocab_size, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2)


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter with non-trivial random values (norm gains near 1, small biases),
    so that no layer is an identity or zero and a wrong key or transposition shows up."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim == 1 and ("bias" in name or name.endswith(".b")):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        elif p.ndim == 1 or "gamma" in name or "norm" in name:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            fan_in = max(1, p[0].numel() if p.ndim > 1 else p.numel())
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
    return module


def write_official_checkpoint(folder: str | Path, seed: int = 0, dit_dtype: torch.dtype = torch.float32) -> Path:
    """Write a tiny Wan2.1-T2V checkpoint in the official Wan-AI layout into `folder`."""
    from safetensors.torch import save_file

    from lightx2v.models.wan.dit import WanModel
    from lightx2v.models.wan.t5 import UMT5Encoder
    from lightx2v.models.wan.tokenizer import WanTokenizer, build_tiny_tokenizer
    from lightx2v.models.wan.vae import WanVAE, tiny_vae_config

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    tok_dir = build_tiny_tokenizer(root / "google" / "umt5-xxl")
    vocab = WanTokenizer.from_folder(tok_dir).vocab_size

    t5_cfg = tiny_t5_config(vocab)
    t5 = randomize_(UMT5Encoder(t5_cfg), seed + 1)
    torch.save({k: v.to(torch.bfloat16) for k, v in t5.state_dict().items()}, root / "models_t5_umt5-xxl-enc-bf16.pth")

    dit_cfg = tiny_dit_config(text_dim=t5_cfg.dim)
    dit = randomize_(WanModel(dit_cfg), seed)
    save_file({k: v.to(dit_dtype).contiguous() for k, v in dit.state_dict().items()},
              str(root / "diffusion_pytorch_model.safetensors"))
    (root / "config.json").write_text(json.dumps(dit_cfg.to_official(), indent=2))

    vae = randomize_(WanVAE(tiny_vae_config()), seed + 2)
    torch.save(vae.state_dict(), root / "Wan2.1_VAE.pth")
    return root
