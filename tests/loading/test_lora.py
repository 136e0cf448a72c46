"""LoRA files onto the Wan DiT: every layout, merged and dynamic, checked against diffusers.

Each test writes a tiny LoRA file with the real key names of one layout, for a tiny random
diffusers `WanTransformer3DModel` whose weights our `WanModel` also loads. The oracle is
diffusers itself (`WanPipeline.load_lora_weights` + `fuse_lora(lora_scale=s)`, which converts
the official/ComfyUI and Kohya/musubi layouts with its own code); for what diffusers does not
apply (`.diff` full deltas, norm deltas, `diff_m` modulation deltas: its converter drops them)
the reference is an explicit hand merge into the diffusers model's own tensors.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightx2v.errors import CheckpointError
from lightx2v.loading.lora import LoraWeights, load_lora, merge_loras_
from lightx2v.loading.state_dict import load_into, rename
from lightx2v.models.wan.dit import WanDiTConfig, WanModel, dit_key_from_diffusers
from lightx2v.models.wan.tiny import randomize_
from lightx2v.runtime.lora import apply_dynamic_lora

pytest.importorskip("diffusers")
from diffusers import WanPipeline, WanTransformer3DModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
    text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6,
)
try:
    import peft  # noqa: F401  (diffusers' load_lora_weights needs it; only the oracle tests do)

    HAS_PEFT = True
except ImportError:
    HAS_PEFT = False
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="diffusers' LoRA loading needs peft (test extra)")
I2V = dict(added_kv_proj_dim=64, image_dim=1280, in_channels=36)
RANK = 4


def _diffusers_model(i2v: bool = False, **overrides) -> WanTransformer3DModel:
    torch.manual_seed(0)
    model = WanTransformer3DModel(**{**TINY, **(I2V if i2v else {}), **overrides}).eval()
    return randomize_(model, seed=7)


def _config(diff: WanTransformer3DModel) -> WanDiTConfig:
    cfg = WanDiTConfig.from_diffusers(diff.config)
    # T2V: a short text length keeps the test fast; I2V: diffusers splits the image tokens off at 512
    return cfg if cfg.model_type == "i2v" else dataclasses.replace(cfg, text_len=16)


def _ours(diff: WanTransformer3DModel) -> WanModel:
    with torch.device("meta"):
        model = WanModel(_config(diff))
    # clones: a merge writes in place and must not reach the diffusers model's tensors
    sd = {k: v.detach().clone() for k, v in rename(diff.state_dict(), dit_key_from_diffusers).items()}
    return load_into(model, sd, keep_fp32=WanModel._keep_in_fp32).eval()


def _inputs(i2v: bool) -> tuple:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 2, 4, 4, generator=g)
    t = torch.tensor([640.0])
    if not i2v:
        return x, t, torch.randn(1, 16, 32, generator=g), None, None
    y = torch.randn(1, 20, 2, 4, 4, generator=g)
    return x, t, torch.randn(1, 512, 32, generator=g), torch.randn(1, 257, 1280, generator=g), y


@torch.no_grad()
def _run_diffusers(diff: WanTransformer3DModel, inputs: tuple) -> torch.Tensor:
    x, t, ctx, clip, y = inputs
    x = x if y is None else torch.cat([x, y], 1)
    return diff(x, t, ctx, encoder_hidden_states_image=clip, return_dict=False)[0]


@torch.no_grad()
def _run(model: WanModel, inputs: tuple) -> torch.Tensor:
    x, t, ctx, clip, y = inputs
    return model(x, t, ctx, clip_fea=clip, y=y)


def _close(out: torch.Tensor, ref: torch.Tensor, tol: float = 1e-4) -> None:
    err, scale = (out - ref).abs().max().item(), ref.abs().max().item()
    assert err <= tol * scale, f"max abs err {err:.3e} > {tol} * {scale:.3e}"


def _changed(out: torch.Tensor, base: torch.Tensor) -> None:
    """The LoRA visibly changes the output (so an unapplied LoRA cannot pass)."""
    assert (out - base).abs().max() > 0.02 * base.abs().max()


# ---------------------------------------------------------------- LoRA files, real key names

_G = torch.Generator().manual_seed(11)


def _pair(out: int, inp, rank: int = RANK) -> tuple[torch.Tensor, torch.Tensor]:
    """(down [r, *in], up [out, r]) with a delta of the weights' own magnitude."""
    inp = (inp,) if isinstance(inp, int) else tuple(inp)
    fan_in = torch.tensor(inp).prod().item()
    return torch.randn(rank, *inp, generator=_G) / fan_in**0.5, torch.randn(out, rank, generator=_G) * 0.5 / rank**0.5


def _vec(n: int) -> torch.Tensor:
    return 0.1 * torch.randn(n, generator=_G)


def _official_modules(n_blocks: int, i2v: bool) -> list[str]:
    mods = [f"blocks.{i}.{a}.{p}" for i in range(n_blocks) for a in ("self_attn", "cross_attn") for p in "qkvo"]
    mods += [f"blocks.{i}.ffn.{j}" for i in range(n_blocks) for j in (0, 2)]
    if i2v:
        mods += [f"blocks.{i}.cross_attn.{p}" for i in range(n_blocks) for p in ("k_img", "v_img")]
    return mods


def _shape(model: nn.Module, module: str) -> tuple[int, int]:
    w = model.get_submodule(module).weight
    return w.shape[0], w.shape[1]


def write_official(path, i2v: bool) -> None:
    """LightX2V / ComfyUI layout: `diffusion_model.` + official names, lora_down/up, alpha, diff_b."""
    ours = _ours(_diffusers_model(i2v))
    sd = {}
    for n, mod in enumerate(_official_modules(2, i2v)):
        out, inp = _shape(ours, mod)
        sd[f"diffusion_model.{mod}.lora_down.weight"], sd[f"diffusion_model.{mod}.lora_up.weight"] = _pair(out, inp)
        sd[f"diffusion_model.{mod}.alpha"] = torch.tensor(float(2 + n % 3 * 3))  # alpha 2, 5, 8: scale != 1
        sd[f"diffusion_model.{mod}.diff_b"] = _vec(out)
    # diffusers converts these without alpha: the official/LightX2V files have none here
    extra = ["text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1",
             "head.head"] + (["img_emb.proj.1", "img_emb.proj.3"] if i2v else [])
    for mod in extra:
        out, inp = _shape(ours, mod)
        sd[f"diffusion_model.{mod}.lora_down.weight"], sd[f"diffusion_model.{mod}.lora_up.weight"] = _pair(out, inp)
        sd[f"diffusion_model.{mod}.diff_b"] = _vec(out)
    save_file(sd, str(path))


def write_kohya(path, i2v: bool) -> None:
    """Kohya / musubi-tuner layout: `lora_unet_` + underscores, lora_down/up, alpha."""
    ours = _ours(_diffusers_model(i2v))
    sd = {}
    for n, mod in enumerate(_official_modules(2, i2v)):
        key = "lora_unet_" + mod.replace(".", "_")
        out, inp = _shape(ours, mod)
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = _pair(out, inp)
        sd[f"{key}.alpha"] = torch.tensor(float(1 + n % 4))
    save_file(sd, str(path))


PEFT_MODULES = [f"blocks.{i}.{a}.{p}" for i in range(2) for a in ("attn1", "attn2")
                for p in ("to_q", "to_k", "to_v", "to_out.0")]
PEFT_MODULES += [f"blocks.{i}.ffn.{p}" for i in range(2) for p in ("net.0.proj", "net.2")]
PEFT_MODULES += ["condition_embedder.time_proj", "condition_embedder.time_embedder.linear_1",
                 "condition_embedder.text_embedder.linear_2", "proj_out", "patch_embedding"]


def write_peft(folder) -> str:
    """diffusers / PEFT layout, written by diffusers: `transformer.` + diffusers names, lora_A/B,
    lora_B.bias, alphas in the file's lora_adapter_metadata (lora_alpha, rank and alpha patterns)."""
    diff = _diffusers_model()
    layers = {}
    for mod in PEFT_MODULES:
        w = diff.get_submodule(mod).weight
        rank = 2 if mod == "condition_embedder.time_proj" else RANK
        down, up = _pair(w.shape[0], w.shape[1:], rank)
        layers[f"{mod}.lora_A.weight"] = down
        layers[f"{mod}.lora_B.weight"] = up.reshape(w.shape[0], rank, *([1] * (w.ndim - 2)))  # conv: 1x1x1
    for mod in ("blocks.0.attn1.to_q", "proj_out"):
        layers[f"{mod}.lora_B.bias"] = _vec(diff.get_submodule(mod).weight.shape[0])
    meta = {"r": RANK, "lora_alpha": 8, "rank_pattern": {"condition_embedder.time_proj": 2},
            "alpha_pattern": {"proj_out": 2, "patch_embedding": 3}, "target_modules": PEFT_MODULES,
            "lora_bias": True}
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=layers, transformer_lora_adapter_metadata=meta)
    return str(folder / "pytorch_lora_weights.safetensors")


def write_diffs(path) -> dict:
    """Full deltas (`.diff`, `.diff_b`, `.diff_m`, as LightX2V's extracted LoRAs hold), official names.
    Returns {diffusers tensor name: delta} for the hand merge."""
    diff = _diffusers_model()
    d = lambda name: 0.3 * torch.randn(diff.get_parameter(name).shape, generator=_G)  # noqa: E731
    pairs = {  # official key in the file -> the same tensor in diffusers' model
        "blocks.0.self_attn.q.diff": "blocks.0.attn1.to_q.weight",
        "blocks.0.self_attn.q.diff_b": "blocks.0.attn1.to_q.bias",
        "blocks.1.cross_attn.o.diff_b": "blocks.1.attn2.to_out.0.bias",
        "blocks.0.norm3.diff": "blocks.0.norm2.weight",
        "blocks.0.norm3.diff_b": "blocks.0.norm2.bias",
        "blocks.1.self_attn.norm_q.diff": "blocks.1.attn1.norm_q.weight",
        "blocks.0.diff_m": "blocks.0.scale_shift_table",
        "head.diff_m": "scale_shift_table",
        "patch_embedding.diff": "patch_embedding.weight",
        "patch_embedding.diff_b": "patch_embedding.bias",
        "head.head.diff": "proj_out.weight",
        "head.head.diff_b": "proj_out.bias",
        "time_projection.1.diff_b": "condition_embedder.time_proj.bias",
    }
    deltas = {theirs: d(theirs) for theirs in pairs.values()}
    save_file({f"diffusion_model.{k}": deltas[v] for k, v in pairs.items()}, str(path))
    return deltas


# ---------------------------------------------------------------- merged vs diffusers


def _check_against_diffusers(lora_file: str, i2v: bool, strength: float) -> None:
    inputs = _inputs(i2v)
    diff = _diffusers_model(i2v)
    base = _run_diffusers(diff, inputs)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=diff, vae=None, scheduler=None)
    pipe.load_lora_weights(lora_file)
    pipe.fuse_lora(lora_scale=strength)
    ref = _run_diffusers(diff, inputs)

    ours = _ours(_diffusers_model(i2v))
    lora = load_lora(lora_file, ours)
    assert not lora.unmatched
    report = merge_loras_(ours, [(lora, strength)])
    assert set(report["merged"]) == lora.targets and report["unmatched"] == []
    out = _run(ours, inputs)
    _changed(ref, base)
    _close(out, ref)


@needs_peft
@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_official_layout_matches_diffusers(tmp_path, i2v: bool) -> None:
    path = tmp_path / "Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank4.safetensors"
    write_official(path, i2v)
    _check_against_diffusers(str(path), i2v, strength=0.7)


@needs_peft
@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_kohya_layout_matches_diffusers(tmp_path, i2v: bool) -> None:
    path = tmp_path / "wan_musubi_lora.safetensors"
    write_kohya(path, i2v)
    lora = load_lora(path, _ours(_diffusers_model(i2v)))
    if i2v:  # the underscores of k_img / v_img were resolved against the model's names
        assert "blocks.1.cross_attn.k_img.weight" in lora.low_rank and "blocks.0.ffn.2.weight" in lora.low_rank
    _check_against_diffusers(str(path), i2v, strength=1.3)


@needs_peft
def test_peft_layout_matches_diffusers(tmp_path) -> None:
    path = write_peft(tmp_path)
    lora = load_lora(path, _ours(_diffusers_model()))
    # scales from the metadata as PEFT computes them: alpha (or its pattern) / rank
    assert lora.low_rank["head.head.weight"].scale == 2 / RANK
    assert lora.low_rank["time_projection.1.weight"].scale == 8 / 2
    assert lora.low_rank["patch_embedding.weight"].shape == (64, 16, 1, 2, 2)
    _check_against_diffusers(path, i2v=False, strength=0.6)


def test_diff_layout_matches_hand_merge(tmp_path) -> None:
    path = tmp_path / "wan_diff_lora.safetensors"
    deltas = write_diffs(path)
    strength, inputs = 0.8, _inputs(False)
    diff = _diffusers_model()
    base = _run_diffusers(diff, inputs)
    with torch.no_grad():  # diffusers' converter drops .diff / norm / diff_m deltas: merge them by hand
        for name, delta in deltas.items():
            diff.get_parameter(name).add_(strength * delta)
    ref = _run_diffusers(diff, inputs)

    ours = _ours(_diffusers_model())
    lora = load_lora(path, ours)
    assert not lora.low_rank and len(lora.diffs) == len(deltas) and not lora.unmatched
    merge_loras_(ours, [(lora, strength)])
    _changed(ref, base)
    _close(_run(ours, inputs), ref)


# ---------------------------------------------------------------- names, errors


def test_every_naming_resolves_to_the_same_targets(tmp_path) -> None:
    ours = _ours(_diffusers_model())
    down, up = _pair(64, 64)
    d_mod, d_norm = torch.randn(1, 6, 64, generator=_G), torch.randn(64, generator=_G)
    # each layout names: a linear pair (cross_attn.k), a norm delta (norm_q), a block modulation delta
    layouts = {
        "diffusion_model": ("diffusion_model.blocks.1.cross_attn.k", "diffusion_model.blocks.0.self_attn.norm_q.diff",
                            "diffusion_model.blocks.0.diff_m"),
        "bare": ("blocks.1.cross_attn.k", "blocks.0.self_attn.norm_q.diff", "blocks.0.modulation.diff"),
        "kohya": ("lora_unet_blocks_1_cross_attn_k", "lora_unet_blocks_0_self_attn_norm_q.diff",
                  "lora_unet_blocks_0.diff_m"),
        "transformer": ("transformer.blocks.1.attn2.to_k", "transformer.blocks.0.attn1.norm_q.diff",
                        "transformer.blocks.0.scale_shift_table.diff"),
        "peft": ("base_model.model.blocks.1.attn2.to_k", "base_model.model.blocks.0.attn1.norm_q.weight.diff",
                 "blocks.0.scale_shift_table.diff"),
    }
    results = []
    for name, (lin, norm, mod) in layouts.items():
        low = ".lora_A.weight", ".lora_B.weight"
        if name in ("diffusion_model", "kohya", "bare"):
            low = ".lora_down.weight", ".lora_up.weight"
        sd = {lin + low[0]: down, lin + low[1]: up, norm: d_norm, mod: d_mod}
        save_file(sd, str(tmp_path / f"{name}.safetensors"))
        lora = load_lora(tmp_path / f"{name}.safetensors", ours)
        assert not lora.unmatched, (name, lora.unmatched)
        results.append(lora)
    for lora in results:
        assert lora.targets == {"blocks.1.cross_attn.k.weight", "blocks.0.self_attn.norm_q.weight",
                                "blocks.0.modulation"}
        assert torch.equal(lora.delta("blocks.1.cross_attn.k.weight"), up @ down)
        assert torch.equal(lora.delta("blocks.0.self_attn.norm_q.weight"), d_norm)
        assert torch.equal(lora.delta("blocks.0.modulation"), d_mod)


def _partial_file(tmp_path, extra: dict) -> tuple:
    ours = _ours(_diffusers_model())
    down, up = _pair(64, 64)
    clean = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
             "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
             "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(2.0)}
    save_file(clean, str(tmp_path / "clean.safetensors"))
    save_file({k: v.clone() for k, v in {**clean, **extra}.items()}, str(tmp_path / "partial.safetensors"))
    return ours, tmp_path / "clean.safetensors", tmp_path / "partial.safetensors"


def test_unmatched_keys_raise_or_warn_never_silent(tmp_path) -> None:
    d, u = _pair(64, 64)
    extra = {
        "diffusion_model.blocks.7.self_attn.q.lora_down.weight": d,  # no block 7 in this model
        "diffusion_model.blocks.7.self_attn.q.lora_up.weight": u,
        "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": d,  # an I2V LoRA on a T2V model
        "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": u,
        "diffusion_model.blocks.1.ffn.0.hada_w1_a": d,  # LoHa: not supported
        "diffusion_model.blocks.1.ffn.2.lora_down.weight": d,  # half a pair
    }
    ours, clean, partial = _partial_file(tmp_path, extra)
    lora = load_lora(partial, ours)
    assert set(lora.unmatched) == set(extra) and lora.targets == {"blocks.0.self_attn.q.weight"}
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"6 tensor\(s\) of partial.safetensors target nothing.*\+2 more"):
        merge_loras_(ours, [(lora, 1.0)])
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())  # nothing merged
    with pytest.raises(CheckpointError, match="blocks.0.cross_attn.k_img.lora_down.weight"):
        merge_loras_(ours, [(lora, 1.0)])
    with pytest.warns(UserWarning, match=r"blocks\.1\.ffn\.0\.hada_w1_a \(LoHa"):
        report = merge_loras_(ours, [(lora, 1.0)], allow_unmatched=True)
    assert sorted(report["unmatched"]) == sorted(extra)
    ref = _ours(_diffusers_model())
    merge_loras_(ref, [(load_lora(clean, ref), 1.0)])
    inputs = _inputs(False)
    assert torch.equal(_run(ours, inputs), _run(ref, inputs))


def test_lora_for_another_model_size_raises(tmp_path) -> None:
    ours = _ours(_diffusers_model())
    sd = {}
    for mod in _official_modules(3, False):  # a width-96, 3-block DiT
        out = 192 if mod.endswith("ffn.0") else 96
        inp = 192 if mod.endswith("ffn.2") else 96
        sd[f"diffusion_model.{mod}.lora_down.weight"], sd[f"diffusion_model.{mod}.lora_up.weight"] = _pair(out, inp)
    save_file(sd, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match=r"does not fit.*width 96 with 3 blocks; this model has width 64 and 2"):
        load_lora(tmp_path / "other.safetensors", ours)
    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": sd[next(iter(sd))]},
              str(tmp_path / "flux.safetensors"))
    with pytest.raises(CheckpointError, match="no tensor of LoRA flux.safetensors targets this model"):
        load_lora(tmp_path / "flux.safetensors", ours)


def test_truncated_file_raises(tmp_path) -> None:
    path = tmp_path / "lora.safetensors"
    write_kohya(path, False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_lora(path, _ours(_diffusers_model()))


# ---------------------------------------------------------------- dynamic


def _merged_output(loras: list[tuple[str, float]], inputs: tuple) -> torch.Tensor:
    fresh = _ours(_diffusers_model())
    merge_loras_(fresh, [(load_lora(p, fresh), s) for p, s in loras])
    return _run(fresh, inputs)


def test_dynamic_switching_equals_fresh_merges(tmp_path) -> None:
    a, b = write_peft(tmp_path), str(tmp_path / "diff.safetensors")
    write_diffs(b)
    model = _ours(_diffusers_model())
    inputs = _inputs(False)
    base_out = _run(model, inputs)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    la, lb = load_lora(a, model), load_lora(b, model)

    lora_set = apply_dynamic_lora(model, [(la, 1.0)])
    out_a = _run(model, inputs)
    _changed(out_a, base_out)
    _close(out_a, _merged_output([(a, 1.0)], inputs))
    assert model.state_dict().keys() == base_sd.keys()
    for k, v in model.state_dict().items():  # Linear / Conv weights are untouched while a LoRA is on
        if k.endswith(("q.weight", "ffn.0.weight", "head.head.weight", "patch_embedding.weight")):
            assert torch.equal(v, base_sd[k]), k

    lora_set.set([(lb, 0.5)])
    _close(_run(model, inputs), _merged_output([(b, 0.5)], inputs))
    lora_set.set([(la, 1.0), (lb, 0.5)])
    _close(_run(model, inputs), _merged_output([(a, 1.0), (b, 0.5)], inputs))
    assert [s for _, s in lora_set.active] == [1.0, 0.5]

    lora_set.reset()
    assert torch.equal(_run(model, inputs), base_out)
    assert all(torch.equal(v, base_sd[k]) for k, v in model.state_dict().items())


def test_dynamic_failed_switch_keeps_previous_and_remove_detaches(tmp_path) -> None:
    ours, clean, partial = _partial_file(tmp_path, {"diffusion_model.blocks.9.ffn.0.diff_b": torch.zeros(64)})
    inputs = _inputs(False)
    base_out = _run(ours, inputs)
    lora_set = apply_dynamic_lora(ours, [(load_lora(clean, ours), 1.0)])
    active_out = _run(ours, inputs)
    with pytest.raises(CheckpointError, match="blocks.9.ffn.0.diff_b"):
        lora_set.set([(load_lora(partial, ours), 1.0)])
    assert torch.equal(_run(ours, inputs), active_out)
    lora_set.remove()
    assert torch.equal(_run(ours, inputs), base_out)
    assert not any(m._forward_hooks for m in ours.modules())
    with pytest.raises(RuntimeError, match="removed"):
        lora_set.set([])


# ---------------------------------------------------------------- quantized layers


class Int8Linear(nn.Module):
    """Stand-in for a quantized linear: int8 weight, per-output-channel absmax scale."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = nn.Parameter(linear.bias.detach().clone())
        q, s = quantize_int8(linear.weight.detach())
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale", s)

    def dequantize_weight(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale[:, None]

    def set_weight(self, w: torch.Tensor) -> None:
        self.weight, self.weight_scale = quantize_int8(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize_weight().to(x.dtype), self.bias)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.float().abs().amax(dim=1).clamp(min=1e-8) / 127
    return (w.float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


def test_merge_into_quantized_layer_is_dequantize_add_requantize(tmp_path) -> None:
    path = tmp_path / "lora.safetensors"
    write_official(path, False)
    model = _ours(_diffusers_model())
    names = ("blocks.0.self_attn.q", "blocks.1.ffn.0")
    for name in names:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, Int8Linear(model.get_submodule(name)))
    layers = {n: model.get_submodule(n) for n in names}
    before = {n: (m.dequantize_weight(), m.bias.detach().clone()) for n, m in layers.items()}
    lora: LoraWeights = load_lora(path, model)
    strength = 0.7
    x = torch.randn(3, 64)
    dyn = apply_dynamic_lora(model, [(lora, strength)])  # dynamic: the quantized base plus the LoRA terms
    with torch.no_grad():
        m = layers["blocks.0.self_attn.q"]
        pair = lora.low_rank["blocks.0.self_attn.q.weight"]
        expect = F.linear(x, before[names[0]][0] + strength * pair.scale * (pair.up @ pair.down),
                          before[names[0]][1] + strength * lora.diffs["blocks.0.self_attn.q.bias"])
        _close(m(x), expect)
    dyn.remove()
    merge_loras_(model, [(lora, strength)])
    raw = load_file(str(path))
    for n, m in layers.items():
        key = f"diffusion_model.{n}"
        down, up = raw[f"{key}.lora_down.weight"], raw[f"{key}.lora_up.weight"]
        w_hand = before[n][0].clone().add_((up @ down) * (raw[f"{key}.alpha"].item() / RANK), alpha=strength)
        q, s = quantize_int8(w_hand)
        assert torch.equal(m.weight, q) and torch.equal(m.weight_scale, s), n
        _close(m.bias.detach(), before[n][1] + strength * raw[f"{key}.diff_b"], tol=1e-6)
