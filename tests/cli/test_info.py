"""`lightx2v info` on LoRA files (made by PEFT, and in kohya / ComfyUI keys) and on the DiT-only
folders `lightx2v convert` writes."""

from __future__ import annotations

import json

import pytest
import torch

from lightx2v.cli.main import main

pytest.importorskip("peft")
from diffusers import WanPipeline, WanTransformer3DModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

TINY = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 32, "in_channels": 16,
        "out_channels": 16, "text_dim": 32, "freq_dim": 32, "ffn_dim": 128, "num_layers": 3, "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads", "eps": 1e-6}
PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2"]


def _info(capsys, *args) -> tuple[str, dict]:
    assert main(["info", *args]) == 0
    text = capsys.readouterr().out
    assert main(["info", *args, "--json"]) == 0
    return text, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def peft_lora(tmp_path_factory):
    """A LoRA trained the diffusers way: PEFT adapters on diffusers' WanTransformer3DModel, saved by diffusers."""
    model = WanTransformer3DModel(**TINY)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=PEFT_TARGETS)
    model.add_adapter(config)
    folder = tmp_path_factory.mktemp("peft-lora")
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(model),
                                  transformer_lora_adapter_metadata=config.to_dict())
    return folder / "pytorch_lora_weights.safetensors"


def test_peft_lora(peft_lora, capsys):
    path = peft_lora
    text, info = _info(capsys, str(path))
    assert info["kind"] == "lora" and info["family"] == "wan2.1"
    assert info["convention"] == "lora_A/lora_B (diffusers / PEFT)"
    assert (info["prefix"], info["names"]) == ("transformer.", "diffusers")
    assert info["ranks"] == {"4": 3 * 10} and info["kinds"] == {"pairs": 30} and info["tensors"] == 60
    assert info["alpha"].startswith("lora_alpha 8 (lora_adapter_metadata; scale = alpha / rank)")
    # diffusers' names, shown as the model's own: attn1 -> self_attn, to_out.0 -> o, net.0.proj -> ffn.0
    assert info["targets"] == ["blocks 0-2: self_attn q,k,v,o; cross_attn q,k,v,o; ffn 0,2"]
    assert info["blocks"] == [0, 1, 2] and info["width"] == 64 and info["widths"] == {"64": 54, "128": 6}
    assert info["fits"] == "for a Wan2.1 DiT of width 64, at least 3 blocks (no released model we know has that width)"
    assert "targets  blocks 0-2: self_attn q,k,v,o; cross_attn q,k,v,o; ffn 0,2" in text
    assert "prefix 'transformer.' (diffusers); diffusers module names" in text

    # what info says is what loading does: the same number of low-rank pairs lands on our model
    from lightx2v.loading.lora import load_lora
    from lightx2v.loading.state_dict import load_into, rename
    from lightx2v.models.wan.dit import WanDiTConfig, WanModel, dit_key_from_diffusers

    base = WanTransformer3DModel(**TINY)
    with torch.device("meta"):
        ours = WanModel(WanDiTConfig.from_diffusers(base.config))
    load_into(ours, rename(base.state_dict(), dit_key_from_diffusers), keep_fp32=WanModel._keep_in_fp32)
    lw = load_lora(path, ours)
    assert len(lw.low_rank) == info["kinds"]["pairs"] and not lw.unmatched
    assert {n.split(".")[1] for n in lw.low_rank} == {"0", "1", "2"}


def test_comfyui_lora_of_the_1_3b_model(tmp_path, capsys):
    """`diffusion_model.` + official names, lora_down/lora_up + alpha, bf16: a ComfyUI / LightX2V release."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(30):
        for mod, (out, inp) in {"self_attn.q": (1536, 1536), "self_attn.o": (1536, 1536),
                                "cross_attn.k": (1536, 1536), "ffn.0": (8960, 1536)}.items():
            key = f"diffusion_model.blocks.{i}.{mod}"
            sd[f"{key}.lora_down.weight"] = torch.randn(2, inp, generator=g).bfloat16()
            sd[f"{key}.lora_up.weight"] = torch.zeros(out, 2).bfloat16()
            sd[f"{key}.alpha"] = torch.tensor(1.0 if mod == "ffn.0" else 2.0)
    sd["diffusion_model.head.head.lora_down.weight"] = torch.zeros(2, 1536).bfloat16()
    sd["diffusion_model.head.head.lora_up.weight"] = torch.zeros(64, 2).bfloat16()
    sd["diffusion_model.blocks.0.diff_m"] = torch.zeros(1, 6, 1536)
    path = tmp_path / "wan_1.3b_comfy_lora.safetensors"
    save_file(sd, str(path))
    text, info = _info(capsys, str(path))
    assert info["convention"] == "lora_down/lora_up + alpha (kohya / ComfyUI / LightX2V)"
    assert (info["prefix"], info["names"], info["family"]) == ("diffusion_model.", "official", "wan2.1")
    assert info["fits"] == "for Wan2.1 1.3B (dim 1536, at least 30 blocks)" and info["width"] == 1536
    assert info["ranks"] == {"2": 121} and info["alpha"] == "2 (x90), 1 (x30) (alpha tensors; scale = alpha / rank)"
    assert info["targets"] == ["block 0: self_attn q,o; cross_attn k; ffn 0; modulation (diff_m)",
                               "blocks 1-29: self_attn q,o; cross_attn k; ffn 0", "also: head.head"]
    assert info["dtypes"] == {"bfloat16": 242, "float32": 121} and info["kinds"] == {"pairs": 121, "diff_m": 1}
    assert "LoRA     for Wan2.1 1.3B (dim 1536, at least 30 blocks)" in text


def test_kohya_lora_with_underscored_names(tmp_path, capsys):
    sd = {}
    for i in range(2):
        for mod in ("self_attn_q", "cross_attn_k_img", "ffn_2"):
            key = f"lora_unet_blocks_{i}_{mod}"
            sd[f"{key}.lora_down.weight"] = torch.zeros(8, 5120)
            sd[f"{key}.lora_up.weight"] = torch.zeros(5120, 8)
            sd[f"{key}.alpha"] = torch.tensor(8.0)
    sd["text_encoder.some_weight"] = torch.zeros(2)  # not a LoRA tensor: reported, as loading reports it
    path = tmp_path / "kohya.safetensors"
    save_file(sd, str(path))
    text, info = _info(capsys, str(path))
    assert info["prefix"] == "lora_unet_" and info["names"] == "official"
    assert info["targets"] == ["blocks 0-1: self_attn q; cross_attn k_img; ffn 2"]
    assert info["fits"] == "for Wan2.1/2.2 14B (dim 5120, at least 2 blocks)"
    assert info["not_lora"] == ["text_encoder.some_weight"]
    assert "not LoRA tensors: 1, e.g. text_encoder.some_weight" in text


@pytest.mark.parametrize("keys, width, family, fits", [
    (("double_blocks.{i}.img_attn_q", "double_blocks.{i}.txt_mlp.fc1"), 2048, "hunyuanvideo-1.5",
     "for HunyuanVideo-1.5 8.3B (dim 2048, at least 2 blocks)"),
    (("transformer_blocks.{i}.attn.to_q", "transformer_blocks.{i}.img_mlp.net.0.proj"), 3072, "qwen-image",
     "for Qwen-Image 20B (dim 3072, at least 2 blocks)"),  # Wan2.2 5B has this width too: the family decides
])
def test_a_lora_of_another_family_is_named_by_its_width(tmp_path, capsys, keys, width, family, fits):
    sd = {}
    for i in range(2):
        for k in keys:
            sd[f"diffusion_model.{k.format(i=i)}.lora_down.weight"] = torch.zeros(4, width)
            sd[f"diffusion_model.{k.format(i=i)}.lora_up.weight"] = torch.zeros(width, 4)
    path = tmp_path / f"{family}_lora.safetensors"
    save_file(sd, str(path))
    text, info = _info(capsys, str(path))
    assert (info["family"], info["fits"]) == (family, fits)


@pytest.mark.parametrize("layout, kind, keys", [("official", "folder", "official"), ("diffusers", "folder", "diffusers"),
                                                ("blocks", "blocks", "official")])
def test_dit_only_folders_written_by_convert(layout, kind, keys, tiny_official_dir, tmp_path, capsys):
    from lightx2v.loading.convert import convert_dit

    dst = tmp_path / f"dit-{layout}"
    convert_dit(tiny_official_dir, dst, to=layout)
    text, info = _info(capsys, str(dst))
    assert info["dit_only"] is True and (info["kind"], info["key_format"]) == (kind, keys)
    assert info["looks_like"] == "Wan2.1 t2v DiT (dim 64, 2 layers)" and info["tensors"] == 69
    # heads cannot be read off shapes (they would be guessed as 1 here): config.json tells 2
    assert info["config"]["num_heads"] == 2 and info["config_file"] == str(dst / "config.json")
    assert "DiT only: no text encoder or VAE here" in text and "use it as --dit-path" in text


def test_dit_folder_with_another_models_config_is_one_line(tiny_official_dir, tmp_path, capsys):
    from lightx2v.loading.convert import convert_dit

    dst = tmp_path / "dit"
    convert_dit(tiny_official_dir, dst, to="official")
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, "dim": 128, "num_heads": 2}))
    assert main(["info", str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the weights in" in err and "dim 64 vs 128" in err


def test_a_model_folder_is_still_a_model_folder(tiny_official_dir, capsys):
    _, info = _info(capsys, str(tiny_official_dir))
    assert (info["family"], info["layout"]) == ("wan2.1", "official") and "dit_only" not in info
