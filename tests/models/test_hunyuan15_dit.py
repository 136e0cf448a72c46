"""The HunyuanVideo-1.5 DiT against diffusers' HunyuanVideo15Transformer3DModel on identical random weights,
its key map, its configs, and the engine transforms that read its declarations (quantization, compile)."""

from __future__ import annotations

import pytest
import torch

from lightx2v.errors import CheckpointError, InputError
from lightx2v.models.hunyuan15.dit import HunyuanVideo15DiT
from lightx2v.models.hunyuan15.dit_config import HunyuanVideo15DiTConfig, fields_from_shapes
from lightx2v.models.hunyuan15.dit_keys import (
    diffusers_from_official, official_from_diffusers, state_dict_from_diffusers, state_dict_to_diffusers,
)

diffusers = pytest.importorskip("diffusers")

TINY = dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
            num_refiner_layers=2, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=24,
            text_embed_2_dim=20, image_embed_dim=12, rope_axes_dim=(4, 6, 6))


def _reference(**over) -> torch.nn.Module:
    torch.manual_seed(0)
    ref = diffusers.HunyuanVideo15Transformer3DModel(**{**TINY, **over}).eval()
    with torch.no_grad():
        for p in ref.parameters():  # diffusers zero-inits some layers: make every tensor count
            p.normal_(0, 0.2)
    return ref


def _ours(ref: torch.nn.Module) -> HunyuanVideo15DiT:
    """Built on meta, filled with the reference's weights in official keys (strict, assign)."""
    with torch.device("meta"):
        model = HunyuanVideo15DiT(HunyuanVideo15DiTConfig.from_diffusers(ref.config))
    model.load_state_dict(state_dict_from_diffusers(ref.state_dict()), strict=True, assign=True)
    assert not any(p.is_meta for p in model.parameters())
    return model.eval()


@pytest.fixture(scope="module")
def pair():
    ref = _reference()
    return ref, _ours(ref)


@pytest.fixture(scope="module")
def ref1():
    """A one-block reference for the engine tests (each builds its own model from it)."""
    return _reference(num_layers=1, num_refiner_layers=1)


def _inputs(batch: int = 2, equal: bool = False, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]])[:batch]
    byt5_mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])[:batch]
    if equal:
        text_mask, byt5_mask = text_mask[:1].expand(batch, -1), byt5_mask[:1].expand(batch, -1)
    return dict(x=torch.randn(batch, 9, 3, 4, 6, generator=g), t=torch.tensor([500.0, 730.0])[:batch],
                text=torch.randn(batch, 7, 24, generator=g), text_mask=text_mask,
                byt5=torch.randn(batch, 5, 20, generator=g), byt5_mask=byt5_mask,
                image=torch.randn(batch, 3, 12, generator=g))


def _run_ref(ref, i: dict, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ref(i["x"], i["t"], i["text"], i["text_mask"], encoder_hidden_states_2=i["byt5"],
                   encoder_attention_mask_2=i["byt5_mask"], image_embeds=image).sample


def _run(model, i: dict, image: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        return model(i["x"], i["t"], i["text"], i["text_mask"], i["byt5"], i["byt5_mask"], image)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= rel * b.abs().max().item(), f"max abs error {err} vs scale {b.abs().max().item()}"


@pytest.mark.parametrize("task, batch, equal", [("t2v", 1, True), ("t2v", 2, False), ("i2v", 1, True),
                                                 ("i2v", 2, True), ("i2v", 2, False)])
def test_forward_matches_diffusers(pair, task: str, batch: int, equal: bool) -> None:
    """T2V (all-zero image states, as diffusers' T2V pipeline passes) and I2V; batch 1, batch 2 with the
    same and with different numbers of valid text / glyph tokens (padding masked in the reference)."""
    ref, model = pair
    i = _inputs(batch, equal)
    image = torch.zeros_like(i["image"]) if task == "t2v" else i["image"]
    expected = _run_ref(ref, i, image)
    _close(_run(model, i, image), expected)
    if task == "t2v":  # no image states at all is the same T2V call
        _close(_run(model, i, None), expected)


def test_y_is_concatenated_on_channels(pair) -> None:
    ref, model = pair
    i = _inputs(1)
    with torch.no_grad():
        split = model(i["x"][:, :4], i["t"], i["text"], i["text_mask"], i["byt5"], i["byt5_mask"], i["image"],
                      y=i["x"][:, 4:])
    _close(split, _run_ref(ref, i, i["image"]))


def test_meanflow_second_timestep_matches_diffusers() -> None:
    ref = _reference(use_meanflow=True, num_layers=1, num_refiner_layers=1)
    model = _ours(ref)
    assert hasattr(model, "time_r_in")
    i = _inputs(1)
    t_r = torch.tensor([250.0])
    with torch.no_grad():
        expected = ref(i["x"], i["t"], i["text"], i["text_mask"], timestep_r=t_r, encoder_hidden_states_2=i["byt5"],
                       encoder_attention_mask_2=i["byt5_mask"], image_embeds=i["image"]).sample
        out = model(i["x"], i["t"], i["text"], i["text_mask"], i["byt5"], i["byt5_mask"], i["image"], t_r=t_r)
    _close(out, expected)


# ---------------------------------------------------------------- names


# The official top-level modules, read from tencent/HunyuanVideo-1.5
# hyvideo/models/transformers/hunyuanvideo_1_5_transformer.py (HunyuanVideo_1_5_DiffusionTransformer.__init__:
# img_in, vision_in, txt_in, time_in, time_r_in (use_meanflow), double_blocks, final_layer, byt5_in
# (glyph_byT5_v2), cond_type_embedding (use_cond_type_embedding); vector_in, guidance_in and
# single_blocks exist there but are absent / empty in the releases).
OFFICIAL_PREFIXES = {"img_in", "vision_in", "txt_in", "time_in", "double_blocks", "final_layer", "byt5_in",
                     "cond_type_embedding"}


def test_key_map_is_a_bijection_onto_our_names(pair) -> None:
    ref, model = pair
    mapped = {k: official_from_diffusers(k) for k in ref.state_dict()}
    assert len(set(mapped.values())) == len(mapped)  # no two diffusers keys land on the same (key, part)
    assert all(diffusers_from_official(*v) == k for k, v in mapped.items())
    assert {o for o, _ in mapped.values()} == set(model.state_dict())
    assert {k.split(".")[0] for k in model.state_dict()} == OFFICIAL_PREFIXES
    # the parts: the refiner's fused qkv (3 diffusers keys per tensor) and the head's swapped modulation
    parts = [p for _, p in mapped.values() if p is not None]
    assert parts.count("swap") == 2 and sum(isinstance(p, tuple) for p in parts) == 2 * 3 * 2
    assert model.key_from_diffusers("transformer_blocks.1.attn.to_add_out.weight") == "double_blocks.1.txt_attn_proj.weight"
    assert model.key_from_diffusers("not.a.key") == "not.a.key"  # unknown keys are kept, for the loader to report


def test_state_dict_round_trip(pair) -> None:
    ref, model = pair
    sd = ref.state_dict()
    back = state_dict_to_diffusers(state_dict_from_diffusers(sd))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    swapped = state_dict_from_diffusers(sd)["final_layer.adaLN_modulation.1.weight"]
    assert torch.equal(swapped[:32], sd["norm_out.linear.weight"][32:])  # (scale, shift) -> (shift, scale)


# ---------------------------------------------------------------- configs

# transformer/480p_t2v/config.json of the tencent/HunyuanVideo-1.5 release (its fields and values)
OFFICIAL_480P_T2V = {
    "_class_name": "HunyuanVideo_1_5_DiffusionTransformer", "attn_mode": "flash", "attn_param": None,
    "concat_condition": True, "glyph_byT5_v2": True, "guidance_embed": False, "heads_num": 16, "hidden_size": 2048,
    "ideal_resolution": "480p", "ideal_task": "t2v", "in_channels": 32, "is_reshape_temporal_channels": False,
    "mlp_act_type": "gelu_tanh", "mlp_width_ratio": 4, "mm_double_blocks_depth": 54, "mm_single_blocks_depth": 0,
    "out_channels": 32, "patch_size": [1, 1, 1], "qk_norm": True, "qk_norm_type": "rms", "qkv_bias": True,
    "rope_dim_list": [16, 56, 56], "rope_theta": 256, "text_pool_type": None, "text_projection": "single_refiner",
    "text_states_dim": 3584, "text_states_dim_2": None, "use_attention_mask": True, "use_cond_type_embedding": True,
    "use_meanflow": False, "vision_projection": "linear", "vision_states_dim": 1152,
}
# diffusers' 480p_t2v transformer config (scripts/convert_hunyuan_video1_5_to_diffusers.py)
DIFFUSERS_480P_T2V = {
    "_class_name": "HunyuanVideo15Transformer3DModel", "in_channels": 65, "out_channels": 32, "num_attention_heads": 16,
    "attention_head_dim": 128, "num_layers": 54, "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 1,
    "patch_size_t": 1, "qk_norm": "rms_norm", "text_embed_dim": 3584, "text_embed_2_dim": 1472,
    "image_embed_dim": 1152, "rope_theta": 256.0, "rope_axes_dim": [16, 56, 56], "use_meanflow": False,
    "target_size": 640, "task_type": "t2v",
}


def test_released_configs_give_the_8b_defaults() -> None:
    official = HunyuanVideo15DiTConfig.from_official(OFFICIAL_480P_T2V)
    assert official == HunyuanVideo15DiTConfig(ideal_resolution="480p", ideal_task="t2v")
    assert HunyuanVideo15DiTConfig.from_diffusers(DIFFUSERS_480P_T2V) == official
    assert official.patch_in_channels == 65 and official.head_dim == 128
    with torch.device("meta"):
        n = sum(p.numel() for p in HunyuanVideo15DiT(official).parameters())
    assert 8.2e9 < n < 8.4e9  # "8.3B"
    assert {k: v for k, v in official.to_official().items()} == {
        k: v for k, v in OFFICIAL_480P_T2V.items() if not k.startswith("_")}


@pytest.mark.parametrize("form, cfg, match", [
    ("official", {"window": 3}, "unknown field 'window'"),
    ("official", {"mm_single_blocks_depth": 40}, "mm_single_blocks_depth = 40 is not supported"),
    ("official", {"guidance_embed": True}, "guidance_embed"),
    ("official", {"vision_projection": "mlp"}, "vision_projection"),
    ("diffusers", {"sample_size": 3}, "unknown field 'sample_size'"),
    ("diffusers", {"qk_norm": "layer_norm"}, "qk_norm"),
])
def test_configs_refuse_by_name(form: str, cfg: dict, match: str) -> None:
    read = HunyuanVideo15DiTConfig.from_official if form == "official" else HunyuanVideo15DiTConfig.from_diffusers
    with pytest.raises(CheckpointError, match=match):
        read(cfg)


def test_omitted_fields_come_from_shapes_stated_ones_win(pair) -> None:
    _, model = pair
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = HunyuanVideo15DiTConfig.from_official({"rope_dim_list": [4, 6, 6]}, shapes=shapes)
    assert got == model.config.__class__(**{**model.config.__dict__, "ideal_resolution": None, "ideal_task": None})
    assert fields_from_shapes(shapes)["heads_num"] == 2
    stated = HunyuanVideo15DiTConfig.from_official({"rope_dim_list": [4, 6, 6], "mlp_width_ratio": 3}, shapes=shapes)
    assert stated.mlp_width_ratio == 3


def test_inputs_are_checked(pair) -> None:
    _, model = pair
    i = _inputs(1)
    with pytest.raises(InputError, match="channels"):
        model(i["x"][:, :5], i["t"], i["text"], i["text_mask"])
    with pytest.raises(InputError, match="text must be"):
        model(i["x"], i["t"], i["text"][..., :3], i["text_mask"])


# ---------------------------------------------------------------- engine declarations


def test_run_blocks_is_the_block_boundary(pair) -> None:
    ref, model = pair
    i = _inputs(1)
    calls = []

    class Hooks:
        def before_block(self, n):
            calls.append(("before", n))

        def after_block(self, n):
            calls.append(("after", n))

    class Runner:  # a cache's stand-in: runs the blocks itself, sees the boundary's arguments
        def __call__(self, m, x, **kw):
            calls.append(("runner", tuple(sorted(kw))))
            return m.run_blocks(x, **kw)

    model.block_hooks, model.block_runner = Hooks(), Runner()
    try:
        out = _run(model, i, i["image"])
    finally:
        model.block_hooks = model.block_runner = None
    # e0: what a cache's rule reads (block 0's modulated input), passed only to a runner
    assert calls == [("runner", ("e", "e0", "rope", "txt", "txt_valid")), ("before", 0), ("after", 0), ("before", 1),
                     ("after", 1)]
    _close(out, _run_ref(ref, i, i["image"]))


def test_bf16_load_keeps_the_declared_fp32_params_and_stays_close(ref1) -> None:
    from lightx2v.loading.state_dict import load_into

    ref = ref1
    expected, i = _run(_ours(ref), _inputs(2), None), _inputs(2)
    with torch.device("meta"):
        model = HunyuanVideo15DiT(HunyuanVideo15DiTConfig.from_diffusers(ref.config))
    load_into(model, state_dict_from_diffusers(ref.state_dict()), dtype=torch.bfloat16,
              keep_fp32=HunyuanVideo15DiT._keep_in_fp32)
    fp32 = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.dtype == torch.float32}
    assert fp32 == {"time_in.mlp.0", "time_in.mlp.2", "txt_in.t_embedder.mlp.0", "txt_in.t_embedder.mlp.2",
                    "txt_in.individual_token_refiner.blocks.0.norm1", "txt_in.individual_token_refiner.blocks.0.norm2",
                    "byt5_in.layernorm", "vision_in.proj.0", "vision_in.proj.4",
                    *(f"double_blocks.0.{s}_attn_{p}_norm" for s in ("img", "txt") for p in ("q", "k"))}
    low = {k: v.bfloat16() if k in ("x", "text", "byt5") else v for k, v in i.items()}
    out = _run(model, low, None)
    assert out.dtype == torch.float32 and ((out - expected).norm() / expected.norm()).item() < 0.03


def test_w8a8_int8_quantization_stays_close(ref1) -> None:
    from lightx2v.quant import QuantLinear, apply_quant

    model, i = _ours(ref1), _inputs(2)
    expected = _run(model, i, i["image"])
    apply_quant(model, "w8a8-int8", compute_dtype=torch.float32)
    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    # per stream: q, k, v, proj, fc1, fc2 and the modulation linear; nothing outside the blocks
    assert len(quantized) == 2 * 7 and "double_blocks.0.img_mod.linear" in quantized
    out = _run(model, i, i["image"])
    rel = ((out - expected).norm() / expected.norm()).item()
    assert 0 < rel < 0.05


def test_regional_compile_gives_the_same_output(ref1) -> None:
    model, i = _ours(ref1), _inputs(1)
    expected = _run(model, i, i["image"])
    for name in model._repeated_blocks:
        for block in model.get_submodule(name):
            block.compile(backend="eager")  # dynamo traces the block; CPU-cheap
    out = _run(model, i, i["image"])
    assert all(b._compiled_call_impl is not None for b in model.double_blocks)
    _close(out, expected)
