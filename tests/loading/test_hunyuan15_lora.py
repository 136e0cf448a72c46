"""LoRAs on the HunyuanVideo-1.5 DiT, for each key layout they ship in, on one tiny random DiT:

- official names (LightX2V, musubi-tuner, `diffusion_model.` files): `double_blocks.0.img_attn_q.lora_down.weight`
  / `lora_up.weight` / `.alpha`, bare or under `diffusion_model.`, and Kohya's `lora_unet_double_blocks_0_img_attn_q`;
- diffusers / PEFT: `transformer.transformer_blocks.0.attn.to_q.lora_A.weight` / `lora_B` (the oracle: diffusers'
  HunyuanVideo15Transformer3DModel with the file loaded by PEFT, `load_lora_adapter`, on identical weights);
- ComfyUI's module names (`diffusion_model.double_blocks.0.img_attn.qkv`, fused q/k/v, `img_mod.lin`, `img_mlp.0`).
The layers split or fused differently here are checked on their own: diffusers' refiner `to_q / to_k / to_v`
land as row blocks of our fused `self_attn_qkv`, diffusers' `norm_out.linear` swaps halves with our head's
modulation, ComfyUI's fused `img_attn.qkv` gives each of our q, k, v a row slice. Every merge is compared
with an independent merge computed here (W + strength * alpha / rank * up @ down on a state dict, then loaded);
dynamic equals merged. The engine path (from_pretrained with lora=, with w8a8-int8 and block offload):
test_engine_composes at the end.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

from lightx2v.errors import CheckpointError  # noqa: E402
from lightx2v.loading.lora import load_lora, merge_loras_  # noqa: E402
from lightx2v.models.hunyuan15.dit import HunyuanVideo15DiT  # noqa: E402
from lightx2v.models.hunyuan15.dit_config import HunyuanVideo15DiTConfig  # noqa: E402
from lightx2v.models.hunyuan15.dit_keys import state_dict_from_diffusers  # noqa: E402
from lightx2v.runtime.lora import apply_dynamic_lora  # noqa: E402
from tests.loading.lora_engine_checks import check_merged_dynamic_offload, check_quant_lora_by_hand  # noqa: E402
from tests.models.test_hunyuan15_dit import _inputs, _reference, _run, _run_ref  # noqa: E402

RANK, ALPHA = 4, 2.0
BLOCK_D = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
           "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
           "ff_context.net.2", "norm1.linear", "norm1_context.linear")
REFINER_D = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.0.proj", "ff.net.2", "norm_out.linear")
TOP_D = ("norm_out.linear", "proj_out", "context_embedder.proj_in", "time_embed.timestep_embedder.linear_1")
BLOCK_O = ("img_attn_q", "img_attn_k", "img_attn_v", "img_attn_proj", "txt_attn_q", "txt_attn_k", "txt_attn_v",
           "txt_attn_proj", "img_mlp.fc1", "img_mlp.fc2", "txt_mlp.fc1", "txt_mlp.fc2", "img_mod.linear", "txt_mod.linear")
REFINER_O = ("self_attn_qkv", "self_attn_proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")
TOP_O = ("final_layer.adaLN_modulation.1", "final_layer.linear", "txt_in.input_embedder", "time_in.mlp.0")


@pytest.fixture(scope="module")
def ref():
    return _reference()


def _ours(ref) -> HunyuanVideo15DiT:
    """Our DiT with copies of the reference's weights (a merge must not write into the reference)."""
    with torch.device("meta"):
        model = HunyuanVideo15DiT(HunyuanVideo15DiTConfig.from_diffusers(ref.config))
    sd = {k: v.clone() for k, v in state_dict_from_diffusers(ref.state_dict()).items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def _diffusers_modules() -> list[str]:
    out = [f"transformer_blocks.{i}.{m}" for i in range(2) for m in BLOCK_D]
    out += [f"context_embedder.token_refiner.refiner_blocks.{i}.{m}" for i in range(2) for m in REFINER_D]
    return out + list(TOP_D)


def _official_modules() -> list[str]:
    out = [f"double_blocks.{i}.{m}" for i in range(2) for m in BLOCK_O]
    out += [f"txt_in.individual_token_refiner.blocks.{i}.{m}" for i in range(2) for m in REFINER_O]
    return out + list(TOP_O)


def _pairs(shapes: dict[str, tuple[int, int]], seed: int = 11) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (down [r, in], up [out, r])}, random."""
    g = torch.Generator().manual_seed(seed)
    return {m: (torch.randn(RANK, i, generator=g) * 0.3, torch.randn(o, RANK, generator=g) * 0.3)
            for m, (o, i) in shapes.items()}


def _shapes(sd: dict, modules: list[str]) -> dict[str, tuple[int, int]]:
    return {m: tuple(sd[f"{m}.weight"].shape) for m in modules}


def _write(path, pairs, prefix: str, kinds=("lora_down.weight", "lora_up.weight"), alpha: bool = True,
           underscore: bool = False):
    sd = {}
    for mod, (down, up) in pairs.items():
        key = prefix + (mod.replace(".", "_") if underscore else mod)
        sd[f"{key}.{kinds[0]}"], sd[f"{key}.{kinds[1]}"] = down.contiguous(), up.contiguous()
        if alpha:
            sd[f"{key}.alpha"] = torch.tensor(ALPHA)
    save_file(sd, str(path))
    return path


def _merged_by_hand(sd: dict, pairs: dict, scale: float, strength: float = 1.0) -> dict:
    out = {k: v.clone() for k, v in sd.items()}
    for mod, (down, up) in pairs.items():
        out[f"{mod}.weight"] += strength * scale * (up @ down)
    return out


def _ours_from(sd: dict, ref):
    model = _ours(ref)
    model.load_state_dict(sd, strict=True)
    return model


def _close(a, b, tol):
    err = (a - b).abs().max().item()
    assert err <= tol, err


def _both_modes(ref, path, want, tol=1e-4, n_targets=None):
    """Ours with the LoRA merged and as hooks (dynamic): each equals `want` (a tensor of outputs)."""
    i = _inputs(1)
    outs = []
    for mode in ("merge", "dynamic"):
        model = _ours(ref)
        lw = load_lora(path, model)
        assert not lw.unmatched
        if n_targets is not None:
            assert len(lw.low_rank) == n_targets
        merge_loras_(model, [(lw, 1.0)]) if mode == "merge" else apply_dynamic_lora(model, [(lw, 1.0)])
        outs.append(_run(model, i, i["image"]))
        _close(outs[-1], want, tol)
    _close(outs[1], outs[0], 1e-5)


# ---------------------------------------------------------------- diffusers / PEFT (the oracle)


def test_diffusers_layout_matches_diffusers_peft(ref, tmp_path):
    """Every block, refiner and head linear, by diffusers' names: ours (merged and dynamic) equals diffusers'
    transformer with the same file loaded by PEFT, within 1e-4; and equals the hand merge on diffusers'
    state dict converted to ours (the refiner's q/k/v fused, the head's halves swapped)."""
    pairs = _pairs(_shapes(ref.state_dict(), _diffusers_modules()))
    path = _write(tmp_path / "d.safetensors", {f"{m}": p for m, p in pairs.items()}, "transformer.",
                  ("lora_A.weight", "lora_B.weight"), alpha=False)
    oracle = copy.deepcopy(ref)
    oracle.load_lora_adapter(str(path), prefix="transformer")
    i = _inputs(1)
    want = _run_ref(oracle, i, i["image"])
    assert (want - _run_ref(ref, i, i["image"])).abs().max() > 0.1  # the LoRA changes the output a lot
    # the 6 refiner q/k/v pairs land on 2 fused tensors: 2 x 3 fewer targets than file layers
    _both_modes(ref, path, want, n_targets=len(pairs) - 4)
    hand = state_dict_from_diffusers(_merged_by_hand(ref.state_dict(), pairs, 1.0))
    model = _ours(ref)
    merge_loras_(model, [(load_lora(path, model), 1.0)])
    for k, v in hand.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-5, atol=1e-5)


def test_refiner_qkv_is_block_diagonal_and_head_is_swapped(ref, tmp_path):
    """The layers that are not one-to-one: the refiner's to_q / to_k / to_v pairs make one block-diagonal
    pair on self_attn_qkv (rank 3r; only to_k given: rows 0 and 2 stay untouched), norm_out.linear's up
    rows land swapped on final_layer.adaLN_modulation.1."""
    sd = ref.state_dict()
    refiner = "context_embedder.token_refiner.refiner_blocks.0"
    mods = [f"{refiner}.attn.to_q", f"{refiner}.attn.to_k", f"{refiner}.attn.to_v", "norm_out.linear"]
    pairs = _pairs(_shapes(sd, mods))
    model = _ours(ref)
    lw = load_lora(_write(tmp_path / "p.safetensors", pairs, "transformer."), model)
    qkv = lw.low_rank["txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight"]
    assert qkv.rank == 3 * RANK and qkv.scale == 1.0
    nonzero = (qkv.up.reshape(3, 32, 3, RANK).abs().sum(dim=(1, 3)) > 0).int()  # [row block, pair]
    assert sorted(nonzero.sum(0).tolist()) == [1, 1, 1] and nonzero.sum(1).tolist() == [1, 1, 1]  # block-diagonal
    want = torch.cat([ALPHA / RANK * pairs[m][1] @ pairs[m][0] for m in mods[:3]])
    torch.testing.assert_close(lw.delta("txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight"), want)
    head = lw.low_rank["final_layer.adaLN_modulation.1.weight"]
    torch.testing.assert_close(head.up, torch.cat([pairs[mods[3]][1][32:], pairs[mods[3]][1][:32]]))
    only_k = load_lora(_write(tmp_path / "k.safetensors", {mods[1]: pairs[mods[1]]}, "transformer."), model)
    delta = only_k.delta("txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight")
    assert delta[:32].abs().sum() == 0 and delta[64:].abs().sum() == 0
    torch.testing.assert_close(delta[32:64], ALPHA / RANK * pairs[mods[1]][1] @ pairs[mods[1]][0])


def test_bias_deltas_are_placed_like_the_rows(ref, tmp_path):
    """`diff_b` on a refiner projection lands in its rows of the fused bias; on diffusers' `norm_out.linear`,
    swapped; `lora_B.bias` (PEFT) likewise, times its pair's scale."""
    g = torch.Generator().manual_seed(2)
    refiner = "transformer.context_embedder.token_refiner.refiner_blocks.1"
    b_k, b_head, b_v = torch.randn(32, generator=g), torch.randn(64, generator=g), torch.randn(32, generator=g)
    down, up = torch.randn(RANK, 32, generator=g), torch.randn(32, RANK, generator=g)
    save_file({f"{refiner}.attn.to_k.diff_b": b_k, "transformer.norm_out.linear.diff_b": b_head,
               f"{refiner}.attn.to_v.lora_A.weight": down, f"{refiner}.attn.to_v.lora_B.weight": up,
               f"{refiner}.attn.to_v.lora_B.bias": b_v, f"{refiner}.attn.to_v.alpha": torch.tensor(ALPHA)},
              str(tmp_path / "b.safetensors"))
    lw = load_lora(tmp_path / "b.safetensors", _ours(ref))
    assert not lw.unmatched
    fused = lw.diffs["txt_in.individual_token_refiner.blocks.1.self_attn_qkv.bias"]
    torch.testing.assert_close(fused, torch.cat([torch.zeros(32), b_k, b_v * ALPHA / RANK]))
    torch.testing.assert_close(lw.diffs["final_layer.adaLN_modulation.1.bias"], torch.cat([b_head[32:], b_head[:32]]))


# ---------------------------------------------------------------- official names, Kohya, ComfyUI


@pytest.mark.parametrize("layout", ["bare_lora_A", "diffusion_model", "kohya"])
def test_official_layouts_equal_the_hand_merge(ref, tmp_path, layout):
    """Official names (bare with lora_A / lora_B + alpha; `diffusion_model.` with lora_down / lora_up + alpha;
    Kohya underscores): merged equals
    W + alpha / r * up @ down on our state dict, loaded; dynamic equals merged."""
    base = _ours(ref).state_dict()
    pairs = _pairs(_shapes(base, _official_modules()))
    prefix = {"bare_lora_A": "", "diffusion_model": "diffusion_model.", "kohya": "lora_unet_"}[layout]
    kinds = ("lora_A.weight", "lora_B.weight") if layout == "bare_lora_A" else ("lora_down.weight", "lora_up.weight")
    path = _write(tmp_path / "o.safetensors", pairs, prefix, kinds, underscore=layout == "kohya")
    want_model = _ours_from(_merged_by_hand(base, pairs, ALPHA / RANK), ref)
    i = _inputs(1)
    want = _run(want_model, i, i["image"])
    _both_modes(ref, path, want, tol=1e-5, n_targets=len(pairs))


def test_comfyui_fused_qkv_gives_each_projection_its_rows(ref, tmp_path):
    """ComfyUI's names: `img_attn.qkv` (one pair over the fused q, k, v) -> our q, k, v each with the shared
    down and its third of up; `img_mod.lin`, `img_mlp.0`, `txt_attn.proj`, the refiner's `self_attn.proj`,
    `time_in.in_layer` one to one. Equals the hand merge on our state dict."""
    base = _ours(ref).state_dict()
    g = torch.Generator().manual_seed(5)
    file_pairs, hand = {}, {}
    for i in range(2):
        down, up = torch.randn(RANK, 32, generator=g) * 0.3, torch.randn(96, RANK, generator=g) * 0.3
        file_pairs[f"double_blocks.{i}.img_attn.qkv"] = (down, up)
        for j, p in enumerate("qkv"):
            hand[f"double_blocks.{i}.img_attn_{p}"] = (down, up[32 * j: 32 * (j + 1)])
    ones = {"double_blocks.0.img_mod.lin": "double_blocks.0.img_mod.linear", "double_blocks.1.img_mlp.0": "double_blocks.1.img_mlp.fc1",
            "double_blocks.0.txt_attn.proj": "double_blocks.0.txt_attn_proj", "time_in.in_layer": "time_in.mlp.0",
            "txt_in.individual_token_refiner.blocks.1.self_attn.proj": "txt_in.individual_token_refiner.blocks.1.self_attn_proj"}
    for theirs, mine in ones.items():
        file_pairs[theirs] = hand[mine] = _pairs(_shapes(base, [mine]), seed=len(hand))[mine]
    path = _write(tmp_path / "c.safetensors", file_pairs, "diffusion_model.")
    want_model = _ours_from(_merged_by_hand(base, hand, ALPHA / RANK), ref)
    i = _inputs(1)
    _both_modes(ref, path, _run(want_model, i, i["image"]), tol=1e-5, n_targets=len(hand))


def test_strength_and_unmatched_follow_the_generic_rules(ref, tmp_path):
    """Strength 0.5 moves the weights half as far; a pair for a block this model lacks, or half a pair (on an
    alias too), is an error naming the key (a warning with allow_unmatched), as for Wan."""
    base = _ours(ref).state_dict()
    pairs = _pairs(_shapes(base, ["double_blocks.0.img_attn_q"]))
    path = _write(tmp_path / "s.safetensors", pairs, "diffusion_model.")
    half, full = _ours(ref), _ours(ref)
    merge_loras_(half, [(load_lora(path, half), 0.5)])
    merge_loras_(full, [(load_lora(path, full), 1.0)])
    w0 = base["double_blocks.0.img_attn_q.weight"]
    torch.testing.assert_close(half.double_blocks[0].img_attn_q.weight - w0,
                               (full.double_blocks[0].img_attn_q.weight - w0) / 2, rtol=1e-5, atol=1e-6)
    d, u = pairs["double_blocks.0.img_attn_q"]
    extra = {"diffusion_model.double_blocks.5.img_attn_q.lora_down.weight": d,
             "diffusion_model.double_blocks.5.img_attn_q.lora_up.weight": u,
             "transformer.context_embedder.token_refiner.refiner_blocks.0.attn.to_q.lora_A.weight": d}
    save_file({k: v.clone() for k, v in {"diffusion_model.double_blocks.0.img_attn_q.lora_down.weight": d,
                                          "diffusion_model.double_blocks.0.img_attn_q.lora_up.weight": u,
                                          **extra}.items()}, str(tmp_path / "x.safetensors"))
    model = _ours(ref)
    lw = load_lora(tmp_path / "x.safetensors", model)
    assert set(lw.unmatched) == set(extra)
    with pytest.raises(CheckpointError, match=r"3 tensor\(s\) of x.safetensors target nothing"):
        merge_loras_(model, [(lw, 1.0)])
    with pytest.warns(UserWarning, match="refiner_blocks.0.attn.to_q.lora_A.weight"):
        merge_loras_(model, [(lw, 1.0)], allow_unmatched=True)


def test_a_fused_pair_of_the_wrong_width_is_refused(ref, tmp_path):
    """A ComfyUI qkv pair whose up is not 3 x the width (a LoRA for another size) is a CheckpointError."""
    g = torch.Generator().manual_seed(0)
    sd = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight": torch.randn(RANK, 32, generator=g),
          "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight": torch.randn(64, RANK, generator=g)}
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit this model: .*img_attn.qkv.lora_down.weight"):
        load_lora(tmp_path / "w.safetensors", _ours(ref))


# ---------------------------------------------------------------- through the engine


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.hunyuan15_fixtures import write_hunyuan15

    return write_hunyuan15(tmp_path_factory.mktemp("hy15lora"))[0]


@pytest.fixture(scope="module")
def folder_lora(folder):
    """A diffusers-named LoRA over the folder's DiT: the blocks' attention, MLP and modulation, the refiner's
    q/k/v (row blocks of our fused tensor) and the head's modulation (halves swapped)."""
    from safetensors.torch import load_file

    sd = load_file(str(next((folder / "transformer").glob("*.safetensors"))))
    mods = [f"transformer_blocks.{i}.{m}" for i in range(2) for m in
            ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.0.proj", "norm1.linear")]
    mods += [f"context_embedder.token_refiner.refiner_blocks.0.attn.to_{p}" for p in "qkv"] + ["norm_out.linear"]
    path = folder.parent / "engine_lora.safetensors"
    return _write(path, _pairs(_shapes(sd, mods), seed=7), "transformer.", ("lora_A.weight", "lora_B.weight"),
                  alpha=False)


def _load(folder, **kw):
    from lightx2v import LightX2V

    return LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, **kw)


def _gen(pipe):
    from tests.hunyuan15_fixtures import LATENT

    z = torch.randn(1, LATENT, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    return pipe.generate('a sign reads "HI"', negative_prompt="blurry", height=32, width=32, num_frames=5,
                         num_inference_steps=1, guidance_scale=1.0, latents=z, output_type="latent").latents


@pytest.fixture(scope="module")
def merged(folder, folder_lora):
    pipe = _load(folder, lora=[(str(folder_lora), 0.8)])
    return pipe, _gen(pipe)


def test_engine_merged_dynamic_and_block_offload_agree(folder, folder_lora, merged):
    """from_pretrained(lora=) on HunyuanVideo-1.5: tests/loading/lora_engine_checks.py."""
    check_merged_dynamic_offload(_load, _gen, folder, folder_lora, merged)


def test_engine_quant_and_lora_equal_step_by_step(folder, folder_lora):
    check_quant_lora_by_hand(_load, _gen, folder, folder_lora)


# ---------------------------------------------------------------- lightx2v convert


@pytest.mark.parametrize("quant", [None, "w8a8-int8"])
def test_convert_merges_a_lora_into_the_official_file_as_loading_does(folder, folder_lora, tmp_path, quant):
    """`lightx2v convert` on the released (official-keyed) HunyuanVideo-1.5 file with a diffusers-named LoRA
    (refiner q/k/v fused, head halves swapped) and quantization equals merging and quantizing at load."""
    from safetensors.torch import load_file

    from lightx2v.loading.convert import convert_dit
    from lightx2v.loading.dit_files import build_dit, inspect_dit_source, read_dit_state_dict
    from lightx2v.quant import apply_quant

    sd = load_file(str(next((folder / "transformer").glob("*.safetensors"))))
    src = tmp_path / "hunyuanvideo1.5_480p_t2v.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict_from_diffusers(sd).items()}, str(src))
    report = convert_dit(src, tmp_path / "out", loras=[(folder_lora, 0.8)], quant=quant)
    assert "double_blocks.0.img_attn_q.weight" in report.merged and "txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight" in report.merged
    model = build_dit(inspect_dit_source(src), dtype=torch.float32, device="cpu")
    merge_loras_(model, [(load_lora(folder_lora, model), 0.8)])
    want = (apply_quant(model, quant) if quant else model).state_dict()
    got = read_dit_state_dict(inspect_dit_source(tmp_path / "out"))
    assert got.keys() == want.keys()
    bad = [k for k in got if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
    assert not bad, bad[:3]
    assert not torch.equal(got["double_blocks.0.img_attn_q.weight" if not quant else "double_blocks.1.img_mlp.fc2.weight"],
                           read_dit_state_dict(inspect_dit_source(src))["double_blocks.0.img_attn_q.weight" if not quant
                                                                         else "double_blocks.1.img_mlp.fc2.weight"])


def test_convert_names_a_diffusers_hunyuan15_folder(folder, tmp_path):
    from lightx2v.loading.convert import convert_dit

    with pytest.raises(CheckpointError, match=r"HunyuanVideo-1\.5 DiT in diffusers keys.*official"):
        convert_dit(folder / "transformer", tmp_path / "out")
    assert not (tmp_path / "out").exists()
