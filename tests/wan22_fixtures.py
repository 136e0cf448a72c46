"""Tiny random Wan2.2 checkpoints (T2V-A14B, I2V-A14B, TI2V-5B), each in both on-disk layouts.

`write_wan22(root, kind)` -> (diffusers_dir, official_dir), kind "t2v" | "i2v" | "ti2v":

- diffusers: written by diffusers itself (`WanPipeline` / `WanImageToVideoPipeline(...,
  transformer_2=, boundary_ratio=, expand_timesteps=).save_pretrained`, every component sharded as
  on the Hub), so the file names, key names and model_index.json are the real ones;
  `transformer/` is the HIGH-noise expert, `transformer_2/` the LOW-noise one.
- official: the same weights renamed to the official keys with our rename tables and saved under
  the Wan-AI names: A14B `high_noise_model/` + `low_noise_model/` (config.json, sharded
  `diffusion_pytorch_model-0000i-of-0000N.safetensors` + index), `Wan2.1_VAE.pth`; TI2V-5B a root
  config.json (model_type ti2v) + shards + index, `Wan2.2_VAE.pth`; both
  `models_t5_umt5-xxl-enc-bf16.pth`, `google/umt5-xxl/` and ModelScope's `configuration.json`.

The two layouts hold identical weights, so a test can compare us against diffusers on them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

TEXT_DIM = 32
KINDS = ("t2v", "i2v", "ti2v")
BOUNDARY = {"t2v": 0.875, "i2v": 0.9}  # what diffusers' conversion script writes (official boundaries)
# (in, out) channels of each kind's DiT: I2V adds mask (4) + image latents (16); TI2V is on the Wan2.2 VAE's 48
CHANNELS = {"t2v": (16, 16), "i2v": (36, 16), "ti2v": (48, 48)}
SHARD_SIZE = "400KB"  # several shards per tiny expert, as the real (multi-GB) ones
MODELSCOPE = {"t2v": "text-to-video-synthesis", "i2v": "image-to-video", "ti2v": "text-to-video-synthesis"}


def _dit(kind: str, seed: int):
    from diffusers import WanTransformer3DModel

    from lightx2v.models.wan.tiny import randomize_

    cin, cout = CHANNELS[kind]
    dit = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=cin,
                                out_channels=cout, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=128, num_layers=2,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    return randomize_(dit, seed=seed).eval()


def _vae(kind: str):
    from diffusers import AutoencoderKLWan

    from lightx2v.models.wan.tiny import randomize_

    if kind == "ti2v":
        from lightx2v.models.wan.vae22 import tiny_vae22_config

        v = tiny_vae22_config()
        vae = AutoencoderKLWan(base_dim=v.dim, decoder_base_dim=v.decoder_dim, z_dim=v.z_dim, dim_mult=list(v.dim_mult),
                               num_res_blocks=v.num_res_blocks, attn_scales=[],
                               temperal_downsample=list(v.temperal_downsample), is_residual=True, in_channels=12,
                               out_channels=12, patch_size=v.patch_size, scale_factor_temporal=4,
                               scale_factor_spatial=16, latents_mean=list(v.latents_mean),
                               latents_std=list(v.latents_std))
    else:
        from lightx2v.models.wan.vae import tiny_vae_config

        v = tiny_vae_config()
        vae = AutoencoderKLWan(base_dim=v.dim, z_dim=v.z_dim, dim_mult=list(v.dim_mult), num_res_blocks=v.num_res_blocks,
                               attn_scales=list(v.attn_scales), temperal_downsample=list(v.temperal_downsample),
                               latents_mean=list(v.latents_mean), latents_std=list(v.latents_std))
    return randomize_(vae, seed=22).eval()


def _text_encoder(tok_dir: Path):
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    from lightx2v.models.wan.tiny import randomize_

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_heads=4,
                                     num_layers=2, relative_attention_num_buckets=32,
                                     relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                                     dense_act_fn="gelu_new", is_encoder_decoder=False, tie_word_embeddings=False))
    return tokenizer, randomize_(t5, seed=21).eval()


def write_diffusers(dst: Path, kind: str) -> Path:
    """A tiny Wan2.2 `kind` pipeline saved by diffusers into `dst`."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

    from lightx2v.models.wan.tokenizer import build_tiny_tokenizer

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    tok_dir = build_tiny_tokenizer(dst.parent / f"_{dst.name}_tok")
    tokenizer, t5 = _text_encoder(tok_dir)
    # diffusers' conversion script: flow_shift 5.0 for TI2V, 3.0 for the A14B models
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    num_train_timesteps=1000, flow_shift=5.0 if kind == "ti2v" else 3.0)
    parts = {"tokenizer": tokenizer, "text_encoder": t5, "vae": _vae(kind), "scheduler": sched,
             "transformer": _dit(kind, 30)}
    if kind == "ti2v":
        pipe = WanPipeline(**parts, expand_timesteps=True)
    else:
        experts = {"transformer_2": _dit(kind, 31), "boundary_ratio": BOUNDARY[kind]}
        cls = WanPipeline if kind == "t2v" else WanImageToVideoPipeline
        pipe = cls(**parts, **experts)  # I2V-A14B: no image_encoder, no image_processor
    pipe.save_pretrained(dst, max_shard_size=SHARD_SIZE)
    shutil.rmtree(tok_dir)
    return dst


def _read_component(folder: Path, stem: str) -> dict:
    from safetensors.torch import load_file

    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        out = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            out.update(load_file(folder / shard))
        return out
    return load_file(folder / f"{stem}.safetensors")


def save_sharded(sd: dict, folder: Path, shards: int = 2, stem: str = "diffusion_pytorch_model") -> list[Path]:
    """`sd` as `{stem}-0000i-of-0000N.safetensors` + `{stem}.safetensors.index.json` (the Wan-AI layout)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(sd)
    size = -(-len(keys) // shards)
    weight_map, files = {}, []
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i * size:(i + 1) * size]
        save_file({k: sd[k].contiguous() for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
        files.append(folder / name)
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (folder / f"{stem}.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return files


def official_dit_config(tcfg: dict, model_type: str) -> dict:
    """The config.json Wan-AI ships beside a DiT (WanModel's registered fields) for a diffusers transformer config."""
    heads, hd = tcfg["num_attention_heads"], tcfg["attention_head_dim"]
    return {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "dim": heads * hd, "eps": tcfg["eps"],
            "ffn_dim": tcfg["ffn_dim"], "freq_dim": tcfg["freq_dim"], "in_dim": tcfg["in_channels"],
            "model_type": model_type, "num_heads": heads, "num_layers": tcfg["num_layers"],
            "out_dim": tcfg["out_channels"], "text_len": 512}


def _write_official_dit(src: Path, dst: Path, model_type: str, shards: int) -> None:
    from lightx2v.loading.state_dict import rename
    from lightx2v.models.wan.dit import dit_key_from_diffusers

    sd = rename(_read_component(src, "diffusion_pytorch_model"), dit_key_from_diffusers)
    save_sharded(sd, dst, shards)
    config = official_dit_config(json.loads((src / "config.json").read_text()), model_type)
    (dst / "config.json").write_text(json.dumps(config, indent=2))


def write_official(src: Path, dst: Path, kind: str) -> Path:
    """The weights of the diffusers folder `src` in the official Wan-AI layout, into `dst`."""
    from lightx2v.loading.state_dict import rename
    from lightx2v.models.wan.t5 import t5_key_from_transformers
    from lightx2v.models.wan.vae import vae_key_from_diffusers
    from lightx2v.models.wan.vae22 import vae22_key_from_diffusers

    dst.mkdir(parents=True)
    if kind == "ti2v":
        _write_official_dit(src / "transformer", dst, "ti2v", shards=3)
    else:
        _write_official_dit(src / "transformer", dst / "high_noise_model", kind, shards=3)
        _write_official_dit(src / "transformer_2", dst / "low_noise_model", kind, shards=2)
    t5 = rename(_read_component(src / "text_encoder", "model"), t5_key_from_transformers)
    torch.save({k: v.to(torch.bfloat16) for k, v in t5.items()}, dst / "models_t5_umt5-xxl-enc-bf16.pth")
    vae_sd = _read_component(src / "vae", "diffusion_pytorch_model")
    vae_name = "Wan2.2_VAE.pth" if kind == "ti2v" else "Wan2.1_VAE.pth"
    torch.save(rename(vae_sd, vae22_key_from_diffusers if kind == "ti2v" else vae_key_from_diffusers), dst / vae_name)
    shutil.copytree(src / "tokenizer", dst / "google" / "umt5-xxl")
    (dst / "configuration.json").write_text(json.dumps({"framework": "Pytorch", "task": MODELSCOPE[kind]}))
    return dst


def write_wan22(root: str | Path, kind: str) -> tuple[Path, Path]:
    """(diffusers_dir, official_dir) of a tiny Wan2.2 `kind` model ("t2v" | "i2v" | "ti2v") under `root`."""
    root = Path(root)
    names = {"t2v": "Wan2.2-T2V-A14B", "i2v": "Wan2.2-I2V-A14B", "ti2v": "Wan2.2-TI2V-5B"}
    diffusers_dir = write_diffusers(root / f"{names[kind]}-Diffusers", kind)
    return diffusers_dir, write_official(diffusers_dir, root / names[kind], kind)
