"""LoRAs on the Qwen-Image DiT against diffusers' `QwenImagePipeline.load_lora_weights` (the oracle) on one tiny
random MMDiT with identical weights, merged and dynamic, for each key layout Qwen-Image LoRAs ship in:

- the Lightning LoRAs (lightx2v/Qwen-Image-Lightning `Qwen-Image-Lightning-4steps-V1.0.safetensors` ...; the
  release's generate_with_diffusers.py merges them by these names): the model's own names with
  `.lora_down.weight` [r, in], `.lora_up.weight` [out, r] and `.alpha` (scale alpha / r), bare or under
  `diffusion_model.` (the files made for ComfyUI);
- Kohya / musubi-tuner: `lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight`, dots as underscores;
- diffusers / PEFT: `transformer.transformer_blocks.0.attn.to_q.lora_A.weight` / `lora_B` (no alpha: scale 1).
Every linear of every block is targeted (attention, MLPs, the modulations), as the Lightning LoRAs do.
The whole pipeline with a Lightning LoRA and its preset: tests/pipelines/test_qwen_image_lightning.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

diffusers = pytest.importorskip("diffusers")
from diffusers import QwenImagePipeline, QwenImageTransformer2DModel  # noqa: E402

from lightx2v.loading.lora import load_lora, merge_loras_  # noqa: E402
from lightx2v.models.qwen_image.dit import QwenImageDiT, QwenImageDiTConfig  # noqa: E402
from lightx2v.runtime.lora import apply_dynamic_lora  # noqa: E402

TINY = dict(in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=24, axes_dims_rope=(4, 6, 6))
SEGMENTS = [(1, 4, 6)]
MODULES = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
           "attn.add_v_proj", "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj",
           "txt_mlp.net.2", "img_mod.1", "txt_mod.1")
RANK, ALPHA = 4, 2.0
TOL = 1e-4


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    ref = QwenImageTransformer2DModel(**QwenImageDiTConfig(**TINY).to_diffusers()).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return ref


def _pairs(base):
    """{module path: (down [r, in], up [out, r])} for every block linear, random."""
    g = torch.Generator().manual_seed(11)
    mods = dict(base.named_modules())
    out = {}
    for i in range(TINY["num_layers"]):
        for m in MODULES:
            lin = mods[f"transformer_blocks.{i}.{m}"]
            out[f"transformer_blocks.{i}.{m}"] = (torch.randn(RANK, lin.in_features, generator=g) * 0.3,
                                                 torch.randn(lin.out_features, RANK, generator=g) * 0.3)
    return out


def _write(path, pairs, layout):
    sd = {}
    for mod, (down, up) in pairs.items():
        if layout in ("lightning", "comfyui"):
            key = ("diffusion_model." if layout == "comfyui" else "") + mod
            sd |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(ALPHA)}
        elif layout == "kohya":
            key = "lora_unet_" + mod.replace(".", "_")
            sd |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(ALPHA)}
        elif layout == "x2v":  # LightX2V's tools/extract/convert_lightning_to_x2v_lora.py: alpha / r folded into up
            sd |= {f"{mod}.lora_down.weight": down, f"{mod}.lora_up.weight": up * (ALPHA / RANK)}
        else:  # diffusers / PEFT
            sd |= {f"transformer.{mod}.lora_A.weight": down, f"transformer.{mod}.lora_B.weight": up}
    save_file(sd, str(path))
    return path


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 24, TINY["in_channels"], generator=g)
    ctx = torch.randn(1, 7, TINY["joint_attention_dim"], generator=g)
    return x, torch.tensor([700.0]), ctx


def _diffusers_out(transformer, x, t, ctx):
    with torch.no_grad():
        return transformer(hidden_states=x, encoder_hidden_states=ctx, timestep=t / 1000, img_shapes=[SEGMENTS],
                           return_dict=False)[0]


def _diffusers_with_lora(base, path):
    """diffusers' transformer with the LoRA loaded by the pipeline's own loader (its key conversions)."""
    transformer = copy.deepcopy(base)
    pipe = QwenImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=transformer)
    pipe.load_lora_weights(str(path))
    return transformer


def _ours(base):
    with torch.device("meta"):
        model = QwenImageDiT(QwenImageDiTConfig(**TINY))
    model.load_state_dict({k: v.clone() for k, v in base.state_dict().items()}, assign=True, strict=True)
    return model.eval()


@pytest.mark.parametrize("layout", ["lightning", "comfyui", "kohya", "diffusers"])
def test_matches_diffusers_load_lora_weights(base, tmp_path, layout):
    """Merged into the weights and as run-time hooks (dynamic): both diffusers' output within 1e-4."""
    path = _write(tmp_path / "lora.safetensors", _pairs(base), layout)
    x, t, ctx = _inputs()
    want = _diffusers_out(_diffusers_with_lora(base, path), x, t, ctx)
    assert (want - _diffusers_out(base, x, t, ctx)).abs().max() > 0.1  # the LoRA changes the output a lot
    scale = ALPHA / RANK if layout != "diffusers" else 1.0
    for mode in ("merge", "dynamic"):
        model = _ours(base)
        lw = load_lora(path, model)
        assert not lw.unmatched and len(lw.low_rank) == TINY["num_layers"] * len(MODULES)
        assert all(p.scale == scale for p in lw.low_rank.values())
        if mode == "merge":
            merge_loras_(model, [(lw, 1.0)])
        else:
            apply_dynamic_lora(model, [(lw, 1.0)])
        with torch.no_grad():
            got = model(x, t, ctx, SEGMENTS)
        err = (got - want).abs().max().item()
        assert err <= TOL, (mode, err)


def test_x2v_layout_is_the_lightning_one_with_the_scale_folded_in(base, tmp_path):
    """LightX2V's own LoRA layout (no `.alpha`: scale 1, alpha / rank folded into `lora_up`) merges to the
    weights the Lightning layout gives (diffusers' loader does not read this layout: no oracle there)."""
    pairs = _pairs(base)
    merged = []
    for layout in ("lightning", "x2v"):
        model = _ours(base)
        lw = load_lora(_write(tmp_path / f"{layout}.safetensors", pairs, layout), model)
        assert not lw.unmatched and len(lw.low_rank) == TINY["num_layers"] * len(MODULES)
        merge_loras_(model, [(lw, 1.0)])
        merged.append(model.state_dict())
    for k, v in merged[0].items():
        torch.testing.assert_close(merged[1][k], v, rtol=1e-6, atol=1e-6)
    assert not torch.equal(merged[0]["transformer_blocks.0.img_mod.1.weight"], base.state_dict()["transformer_blocks.0.img_mod.1.weight"])


def test_strength_scales_the_delta(base, tmp_path):
    """Strength 0.5 of a LoRA: the weights move half as far as at 1.0 (merge: exactly, in float32)."""
    path = _write(tmp_path / "lora.safetensors", _pairs(base), "lightning")
    full, half = _ours(base), _ours(base)
    merge_loras_(full, [(load_lora(path, full), 1.0)])
    merge_loras_(half, [(load_lora(path, half), 0.5)])
    w0 = base.state_dict()["transformer_blocks.0.attn.to_q.weight"]
    d_full = full.transformer_blocks[0].attn.to_q.weight - w0
    d_half = half.transformer_blocks[0].attn.to_q.weight - w0
    torch.testing.assert_close(d_half, d_full / 2, rtol=1e-5, atol=1e-6)
