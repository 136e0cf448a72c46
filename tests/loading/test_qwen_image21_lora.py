"""LoRAs on the Qwen-Image-2.1 DiT against diffusers' `QwenImage21Pipeline.load_lora_weights` (the oracle: the
QwenImage LoRA loader, its conversions of non-diffusers names) on one tiny random DiT with identical weights,
merged and dynamic, for each key layout: the model's own (= diffusers') names with `lora_down` / `lora_up` /
`.alpha`, bare or under `diffusion_model.`; Kohya's `lora_unet_transformer_blocks_0_attn_to_q`; diffusers /
PEFT `transformer.transformer_blocks.0.attn.to_q.lora_A.weight` (no alpha: scale 1). Our 2.1 DiT fuses and
splits nothing that diffusers' does not (every linear is the same layer under the same name), so there is no
row mapping here; the top-level layers (the shared `modulation.1`, `txt_in.in_layer`, `img_in`, `norm_out`,
`proj_out`, the time embedding), which diffusers' Kohya conversion does not name the 2.1 way, are checked
against a merge computed here. The engine path (from_pretrained with lora=, w8a8-int8, block offload, a
dynamic LoRA under the prefix K/V cache): the last tests.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

diffusers = pytest.importorskip("diffusers")
from diffusers import QwenImage21Pipeline, QwenImage21Transformer2DModel  # noqa: E402

from lightx2v.loading.lora import load_lora, merge_loras_  # noqa: E402
from lightx2v.models.qwen_image.dit21 import Prompt21, QwenImage21DiT, QwenImage21DiTConfig  # noqa: E402
from lightx2v.runtime.lora import apply_dynamic_lora  # noqa: E402
from tests.loading.lora_engine_checks import check_merged_dynamic_offload, check_quant_lora_by_hand  # noqa: E402

CFG = dict(in_channels=8, out_channels=8, num_layers=2, attention_head_dim=16, num_attention_heads=2,
           context_in_dim=24, mlp_ratio=3, axes_dims_rope=[4, 6, 6])
H, W = 4, 6
BLOCK = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "img_mlp.proj", "img_mlp.gate_layer", "img_mlp.out")
TOP = ("modulation.1", "txt_in.in_layer", "txt_in.out_layer", "img_in", "norm_out.linear", "proj_out",
       "time_text_embed.timestep_embedder.linear_1")
RANK, ALPHA = 4, 2.0


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    ref = QwenImage21Transformer2DModel(**CFG).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return ref


def _ours(base) -> QwenImage21DiT:
    with torch.device("meta"):
        model = QwenImage21DiT(QwenImage21DiTConfig.from_diffusers(dict(base.config)))
    model.load_state_dict({k: v.clone() for k, v in base.state_dict().items()}, strict=True, assign=True)
    return model.eval()


def _pairs(base, modules, seed=11):
    g = torch.Generator().manual_seed(seed)
    mods = dict(base.named_modules())
    return {m: (torch.randn(RANK, mods[m].in_features, generator=g) * 0.3,
                torch.randn(mods[m].out_features, RANK, generator=g) * 0.3) for m in modules}


def _blocks():
    return [f"transformer_blocks.{i}.{m}" for i in range(CFG["num_layers"]) for m in BLOCK]


def _write(path, pairs, layout):
    sd = {}
    for mod, (down, up) in pairs.items():
        if layout == "diffusers":
            sd |= {f"transformer.{mod}.lora_A.weight": down, f"transformer.{mod}.lora_B.weight": up}
            continue
        key = {"bare": mod, "comfyui": f"diffusion_model.{mod}", "kohya": "lora_unet_" + mod.replace(".", "_")}[layout]
        sd |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(ALPHA)}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, H * W, 8, generator=g), torch.randn(1, 7, 24, generator=g), torch.tensor([700.0])


def _ref_out(transformer, x, ctx, t):
    mask = torch.cat([torch.zeros(1, 7, dtype=torch.bool), torch.ones(1, H * W // 4, dtype=torch.bool)], 1)
    with torch.no_grad():
        out = transformer(hidden_states=x, encoder_hidden_states=ctx, timestep=t / 1000, img_shapes=[[(1, H, W)]],
                          img_mask=mask, return_dict=False)[0]
    return out[:, -H * W:]


def _run(model, x, ctx, t):
    with torch.no_grad():
        return model(x, t, Prompt21(ctx), (H, W))


def _merged_and_dynamic(base, path, n_targets, scale):
    x, ctx, t = _inputs()
    outs = []
    for mode in ("merge", "dynamic"):
        model = _ours(base)
        lw = load_lora(path, model)
        assert not lw.unmatched and len(lw.low_rank) == n_targets
        assert all(p.scale == scale for p in lw.low_rank.values())
        merge_loras_(model, [(lw, 1.0)]) if mode == "merge" else apply_dynamic_lora(model, [(lw, 1.0)])
        outs.append(_run(model, x, ctx, t))
    # fp32, outputs of size ~30: 1e-5 of the output's scale (the two sum the same terms in another order)
    assert (outs[1] - outs[0]).abs().max() <= 1e-5 * outs[0].abs().max()
    return outs[0]


@pytest.mark.parametrize("layout", ["bare", "comfyui", "kohya", "diffusers"])
def test_matches_diffusers_load_lora_weights(base, tmp_path, layout):
    """Every block linear: merged and dynamic both give diffusers' output within 1e-4. diffusers' Kohya
    conversion (0.42) turns `img_mlp_gate_layer` into `img_mlp.gate.layer` and drops it with a warning, so that
    oracle is asked without the gate; ours resolves it (the hand-merge test below)."""
    blocks = [m for m in _blocks() if layout != "kohya" or not m.endswith("gate_layer")]
    path = _write(tmp_path / "lora.safetensors", _pairs(base, blocks), layout)
    transformer = copy.deepcopy(base)
    # what QwenImage21Pipeline.load_lora_weights does (its constructor needs a processor, these do not)
    sd, meta = QwenImage21Pipeline.lora_state_dict(str(path), return_lora_metadata=True)
    QwenImage21Pipeline.load_lora_into_transformer(sd, transformer=transformer, metadata=meta)
    x, ctx, t = _inputs()
    want = _ref_out(transformer, x, ctx, t)
    assert (want - _ref_out(base, x, ctx, t)).abs().max() > 0.1  # the LoRA changes the output a lot
    got = _merged_and_dynamic(base, path, len(blocks), 1.0 if layout == "diffusers" else ALPHA / RANK)
    assert (got - want).abs().max() <= 1e-4


@pytest.mark.parametrize("layout", ["bare", "kohya", "diffusers"])
def test_top_level_layers_equal_the_hand_merge(base, tmp_path, layout):
    """The layers outside the blocks (the shared modulation, the text and image inputs, the head, the time
    embedding) and the blocks: merged equals W + strength * scale * up @ down on the state dict, loaded."""
    pairs = _pairs(base, [*TOP, *_blocks()], seed=4)
    path = _write(tmp_path / "top.safetensors", pairs, layout)
    scale = 1.0 if layout == "diffusers" else ALPHA / RANK
    sd = {k: v.clone() for k, v in base.state_dict().items()}
    for m, (down, up) in pairs.items():
        sd[f"{m}.weight"] += 0.7 * scale * (up @ down)
    want_model = _ours(base)
    want_model.load_state_dict(sd)
    model = _ours(base)
    merge_loras_(model, [(load_lora(path, model), 0.7)])
    for k, v in sd.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-5, atol=1e-5)
    got = _merged_and_dynamic(base, path, len(pairs), scale)
    x, ctx, t = _inputs()
    full = _ours(base)
    full.load_state_dict({k: base.state_dict()[k] + (v - base.state_dict()[k]) / 0.7 for k, v in sd.items()})
    assert (got - _run(full, x, ctx, t)).abs().max() <= 1e-4


# ---------------------------------------------------------------- through the engine


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.qwen_image21_fixtures import write_qwen_image21

    return write_qwen_image21(tmp_path_factory.mktemp("qwen21lora"))[0]


@pytest.fixture(scope="module")
def folder_lora(folder):
    """A Kohya LoRA over the folder's DiT: every block linear (the quantized ones) and the shared modulation."""
    from safetensors.torch import load_file

    sd = load_file(str(next((folder / "transformer").glob("*.safetensors"))))
    g = torch.Generator().manual_seed(9)
    out = {}
    mods = [f"transformer_blocks.{i}.{m}" for i in range(2) for m in BLOCK] + ["modulation.1"]
    for m in mods:
        o, i = sd[f"{m}.weight"].shape
        key = "lora_unet_" + m.replace(".", "_")
        out |= {f"{key}.lora_down.weight": torch.randn(RANK, i, generator=g) * 0.3,
                f"{key}.lora_up.weight": torch.randn(o, RANK, generator=g) * 0.3, f"{key}.alpha": torch.tensor(ALPHA)}
    path = folder.parent / "engine_lora.safetensors"
    save_file(out, str(path))
    return path


def _load(folder, **kw):
    from lightx2v import LightX2V

    return LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, **kw)


def _gen(pipe):
    z = torch.randn(1, 8, 1, 4, 6, generator=torch.Generator().manual_seed(5))
    return pipe.generate("a red cat on a mat", negative_prompt="blurry", height=64, width=96, num_inference_steps=1,
                         guidance_scale=1.0, latents=z, output_type="latent").latents


@pytest.fixture(scope="module")
def merged(folder, folder_lora):
    pipe = _load(folder, lora=[(str(folder_lora), 0.8)])
    return pipe, _gen(pipe)


def test_engine_merged_dynamic_and_block_offload_agree(folder, folder_lora, merged):
    """from_pretrained(lora=) on Qwen-Image-2.1 (the prefix K/V kept: context_kv on by default; set_lora([]) makes them again): tests/loading/lora_engine_checks.py."""
    check_merged_dynamic_offload(_load, _gen, folder, folder_lora, merged)


def test_engine_quant_and_lora_equal_step_by_step(folder, folder_lora):
    check_quant_lora_by_hand(_load, _gen, folder, folder_lora)
