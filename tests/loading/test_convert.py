"""`lightx2v convert`: layouts round-trip bit-exactly, quantizing / LoRA merging / casting equal
what loading does, bad input is one line and leaves nothing, and the writer streams.

The source is a tiny random Wan2.1 T2V DiT (fp32) in the official Wan-AI layout (config.json +
diffusion_pytorch_model.safetensors, official keys); LoRA files use LightX2V's key names.
"""

from __future__ import annotations

import json
import shutil
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

import lightx2v.loading.convert as conv
from lightx2v.cli.main import main
from lightx2v.errors import CheckpointError
from lightx2v.loading.convert import convert_dit
from lightx2v.models.wan.dit_format import diffusers_key_table
from lightx2v.loading.dit_files import build_dit, inspect_dit_source, load_dit_weights, read_dit_state_dict
from lightx2v.loading.lora import load_lora, merge_loras_
from lightx2v.models.wan.dit import WanDiTConfig, WanModel
from lightx2v.models.wan.tiny import randomize_, tiny_dit_config
from lightx2v.quant import QuantLinear, apply_quant

CFG = tiny_dit_config()
F32 = torch.float32


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert") / "Wan2.1-T2V-tiny"
    root.mkdir()
    sd = {k: v.detach().contiguous() for k, v in randomize_(WanModel(CFG), seed=7).state_dict().items()}
    save_file(sd, str(root / "diffusion_pytorch_model.safetensors"))
    (root / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v", "patch_size": [1, 2, 2],
        "text_len": CFG.text_len, "in_dim": 16, "dim": CFG.dim, "ffn_dim": CFG.ffn_dim, "freq_dim": CFG.freq_dim,
        "text_dim": CFG.text_dim, "out_dim": 16, "num_heads": CFG.num_heads, "num_layers": CFG.num_layers,
        "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True, "eps": 1e-06}))
    return root


def _inputs():
    g = torch.Generator().manual_seed(3)
    # the full text_len of context, so that our zero-padding to text_len and diffusers' none agree
    return torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([640.0]), torch.randn(1, CFG.text_len, 32, generator=g)


def _tensors(path) -> dict:
    return read_dit_state_dict(inspect_dit_source(path))


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


def _leftovers(folder) -> list:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


# ---------------------------------------------------------------- names and layouts


@pytest.mark.parametrize("kind", ["t2v", "i2v", "flf2v"])
def test_diffusers_key_table_is_a_bijection_onto_diffusers_names(kind):
    from diffusers import WanTransformer3DModel

    cfg = WanDiTConfig(**{**CFG.__dict__, "model_type": kind, "in_dim": 16 if kind == "t2v" else 36})
    image = dict(image_dim=1280, added_kv_proj_dim=CFG.dim, pos_embed_seq_len=514 if kind == "flf2v" else None)
    with torch.device("meta"):
        theirs = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32,
                                       in_channels=cfg.in_dim, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=128,
                                       num_layers=2, **(image if kind != "t2v" else {}))
        ours = WanModel(cfg)
    table = diffusers_key_table(cfg)
    assert set(table) == set(ours.state_dict())
    assert set(table.values()) == set(theirs.state_dict())


def test_round_trip_official_diffusers_blocks_official_is_bit_exact(src, tmp_path):
    from diffusers import WanTransformer3DModel

    d, b, o = tmp_path / "diffusers", tmp_path / "blocks", tmp_path / "official"
    convert_dit(src, d, to="diffusers")
    convert_dit(d, b, to="blocks")
    convert_dit(b, o, to="official")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert inspect_dit_source(d).key_format == "diffusers"
    assert sorted(p.name for p in b.iterdir()) == ["block_0.safetensors", "block_1.safetensors", "config.json",
                                                   "non_block.safetensors"]
    assert set(load_file(b / "block_1.safetensors")) == {k for k in _tensors(src) if k.startswith("blocks.1.")}
    assert inspect_dit_source(b).kind == "blocks"
    _same(_tensors(o), _tensors(src))
    assert json.loads((o / "config.json").read_text()) == json.loads((src / "config.json").read_text())

    theirs = WanTransformer3DModel.from_pretrained(d).eval()
    ours = build_dit(inspect_dit_source(src), dtype=F32, device="cpu", expected=CFG)  # text_len 32
    x, t, ctx = _inputs()
    with torch.no_grad():
        ref, out = ours(x, t, ctx), theirs(x, t, ctx, return_dict=False)[0]
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_comfyui_file_without_config(src, tmp_path):
    comfy = tmp_path / "models" / "wan2.1_t2v_tiny_fp32.safetensors"
    comfy.parent.mkdir()
    save_file({f"model.diffusion_model.{k}": v for k, v in _tensors(src).items()}, str(comfy))
    convert_dit(comfy, tmp_path / "off", to="official")
    assert [p.name for p in (tmp_path / "off").iterdir()] == ["diffusion_pytorch_model.safetensors"]  # no config given
    _same(_tensors(tmp_path / "off"), _tensors(src))
    report = convert_dit(comfy, tmp_path / "diff", to="diffusers")
    assert any("num_heads" in n for n in report.notes)  # heads read off the shapes: said so


# ---------------------------------------------------------------- quantization, LoRA, dtype


@pytest.mark.parametrize("layout,scheme", [("official", "w8a8-int8"), ("diffusers", "w8a8-fp8"), ("blocks", "w8a8-int8")])
def test_quant_equals_quantizing_on_load(src, tmp_path, layout, scheme):
    convert_dit(src, tmp_path / "q", to=layout, quant=scheme)
    got = inspect_dit_source(tmp_path / "q")
    with torch.device("meta"):
        ref = apply_quant(WanModel(CFG), scheme, compute_dtype=F32)
    targets = {n for n, m in ref.named_modules() if isinstance(m, QuantLinear)}
    assert got.quant == scheme and set(got.quantized) == targets and len(targets) == 2 * 10
    load_dit_weights(ref, _tensors(src), dtype=F32)  # float file + QuantLinear: quantized on load
    model = build_dit(got, dtype=F32, device="cpu", expected=CFG)
    _same(model.state_dict(), ref.state_dict())
    with torch.no_grad():  # same weights; the CPU kernels' summation order may depend on alignment
        out, expected = model(*_inputs()), ref.eval()(*_inputs())
    assert (out - expected).abs().max() <= 1e-6 * expected.abs().max()


def _write_lora(path, seed: int, extra: dict | None = None):
    """LightX2V layout: diffusion_model. + official names; lora_down/up + alpha, diff_b, diff_m."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for mod, (out, inp) in {"blocks.0.self_attn.q": (64, 64), "blocks.1.ffn.0": (128, 64), "head.head": (64, 64)}.items():
        sd[f"diffusion_model.{mod}.lora_down.weight"] = torch.randn(4, inp, generator=g) / inp**0.5
        sd[f"diffusion_model.{mod}.lora_up.weight"] = torch.randn(out, 4, generator=g) * 0.25
        sd[f"diffusion_model.{mod}.alpha"] = torch.tensor(2.0)
    sd["diffusion_model.blocks.1.cross_attn.o.diff_b"] = 0.1 * torch.randn(64, generator=g)
    sd["diffusion_model.blocks.0.diff_m"] = 0.1 * torch.randn(1, 6, 64, generator=g)
    save_file({**sd, **(extra or {})}, str(path))
    return path


def _merged_at_load(source, loras, quant=None):
    model = build_dit(inspect_dit_source(source), dtype=F32, device="cpu")
    merge_loras_(model, [(load_lora(p, model), s) for p, s in loras])
    return apply_quant(model, quant) if quant else model


@pytest.mark.parametrize("quant", [None, "w8a8-int8"])
def test_lora_equals_merging_at_load(src, tmp_path, quant):
    loras = [(_write_lora(tmp_path / "a.safetensors", 1), 0.5), (_write_lora(tmp_path / "b.safetensors", 2), -1.0)]
    report = convert_dit(src, tmp_path / "out", loras=loras, quant=quant)
    assert "blocks.0.modulation" in report.merged and "blocks.1.cross_attn.o.bias" in report.merged
    expected = _merged_at_load(src, loras, quant).state_dict()
    _same(_tensors(tmp_path / "out"), expected)
    assert not torch.equal(expected["blocks.0.modulation"], _tensors(src)["blocks.0.modulation"])


def test_lora_into_a_prequantized_source(src, tmp_path):
    convert_dit(src, tmp_path / "q", quant="w8a8-int8")
    lora = [(_write_lora(tmp_path / "a.safetensors", 1), 0.8)]
    convert_dit(tmp_path / "q", tmp_path / "out", loras=lora, to="blocks")
    _same(_tensors(tmp_path / "out"), _merged_at_load(tmp_path / "q", lora).state_dict())


def test_unmatched_lora_keys_raise_or_warn(src, tmp_path):
    stray = {"diffusion_model.blocks.7.self_attn.q.lora_down.weight": torch.zeros(4, 64),
             "diffusion_model.blocks.7.self_attn.q.lora_up.weight": torch.zeros(64, 4)}
    lora = _write_lora(tmp_path / "a.safetensors", 1, stray)
    with pytest.raises(CheckpointError, match=r"blocks\.7\.self_attn\.q\.lora_down"):
        convert_dit(src, tmp_path / "out", loras=[(lora, 1.0)])
    assert not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match="blocks.7"):
        report = convert_dit(src, tmp_path / "out", loras=[(lora, 1.0)], allow_unmatched=True)
    assert any("skipped" in n for n in report.notes)
    _same(_tensors(tmp_path / "out"), _merged_at_load(src, [(_write_lora(tmp_path / "c.safetensors", 1), 1.0)]).state_dict())


@pytest.mark.parametrize("quant", [None, "w8a8-int8"])
def test_dtype_casts_floats_except_the_fp32_kept_ones(src, tmp_path, quant):
    convert_dit(src, tmp_path / "out", dtype="bf16", quant=quant)
    got, ref = _tensors(tmp_path / "out"), _tensors(src)
    for k, v in got.items():
        if k.endswith(".weight_scale"):
            assert v.dtype == F32
        elif quant and v.dtype == torch.int8:
            assert k.endswith(".weight") and k.startswith("blocks.")
        elif any(p in k for p in WanModel._keep_in_fp32):
            assert v.dtype == F32 and torch.equal(v, ref[k]), k
        else:
            assert v.dtype == torch.bfloat16 and torch.equal(v, ref[k].bfloat16()), k
    assert {v.dtype for v in got.values()} >= {torch.bfloat16, F32}


# ---------------------------------------------------------------- streaming and atomicity


def test_small_shards_stream_into_an_index(src, tmp_path, monkeypatch):
    real, alive, peak = conv.write_safetensors, [], [0]

    def watching(path, specs, tensors):
        def each():
            for t in tensors:
                alive.append(weakref.ref(t))
                peak[0] = max(peak[0], sum(r() is not None for r in alive))
                yield t
        return real(path, specs, each())

    monkeypatch.setattr(conv, "write_safetensors", watching)
    report = convert_dit(src, tmp_path / "out", shard_size=40_000)
    out = tmp_path / "out"
    index = json.loads((out / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 5 and shards == sorted(f for f in report.files if f.endswith("-of-%05d.safetensors" % len(shards)))
    for shard in shards:
        keys = set(load_file(out / shard))
        assert keys == {k for k, f in index["weight_map"].items() if f == shard}
        assert (out / shard).stat().st_size <= 40_000 + 4096 or len(keys) == 1  # data + header, or one big tensor
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in _tensors(src).values())
    _same(_tensors(out), _tensors(src))
    # one tensor in flight at a time (the one being written, and the previous one being freed)
    assert len(alive) == len(_tensors(src)) and peak[0] <= 2


@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_nothing(src, tmp_path, monkeypatch, error):
    real, calls = conv.write_safetensors, []

    def failing(path, specs, tensors):
        calls.append(path)
        if len(calls) > 1:
            raise error
        return real(path, specs, tensors)

    monkeypatch.setattr(conv, "write_safetensors", failing)
    with pytest.raises(type(error)):
        convert_dit(src, tmp_path / "out", shard_size=40_000)
    assert len(calls) == 2 and calls[0].is_file() is False  # the first shard was written, then removed
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


# ---------------------------------------------------------------- the command line


def _cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["convert", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_converts(src, tmp_path, capsys):
    lora = _write_lora(tmp_path / "a.safetensors", 1)
    rc, out, err = _cli(capsys, src, tmp_path / "out", "--to", "blocks", "--dtype", "fp32", "--lora", f"{lora}:0.5")
    assert rc == 0 and err == "" and "blocks layout" in out and "merged with 1 LoRA" in out
    _same(_tensors(tmp_path / "out"), _merged_at_load(src, [(lora, 0.5)]).state_dict())


def _bad_inputs(src, tmp):
    tmp.mkdir()
    (tmp / "full").mkdir()
    (tmp / "full" / "keep.txt").write_text("x")
    data = (src / "diffusion_pytorch_model.safetensors").read_bytes()
    (tmp / "cut").mkdir()
    (tmp / "cut" / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 2])
    save_file({"model.diffusion_model.blocks.0.self_attn.q.weight": torch.zeros(2, 2),
               "model.diffusion_model.patch_embedding.weight": torch.zeros(2, 2, 1, 2, 2)}, str(tmp / "odd.safetensors"))
    convert_dit(src, tmp / "quantized", quant="w8a8-int8")
    lora = _write_lora(tmp / "stray.safetensors", 1, {"diffusion_model.blocks.9.diff_m": torch.zeros(1, 6, 64)})
    out = tmp / "out"
    return {
        "missing source": ([tmp / "nope", out], "not found"),
        "unknown source": ([tmp / "full", out], "no DiT weights"),
        "truncated source": ([tmp / "cut", out], "truncated"),
        "incomplete source": ([tmp / "odd.safetensors", out], "no tensor"),
        "dst not empty": ([src, tmp / "full"], "not empty"),
        "quantize a quantized source": ([tmp / "quantized", out, "--quant", "w8a8-fp8"], "already quantized"),
        "bad lora spec": ([src, out, "--lora", f"{lora}:abc"], "must be a number"),
        "missing lora": ([src, out, "--lora", tmp / "none.safetensors"], "LoRA file not found"),
        "unmatched lora": ([src, out, "--lora", lora], "--lora-allow-unmatched"),
        "bad shard size": ([src, out, "--shard-size", "lots"], "--shard-size"),
    }


def test_cli_bad_inputs_are_one_line_and_write_nothing(src, tmp_path, capsys):
    cases = _bad_inputs(src, tmp_path / "in")
    for name, (args, words) in cases.items():
        rc, out, err = _cli(capsys, *args)
        assert rc == 2 and err.count("\n") == 1 and err.startswith("lightx2v: error: ") and words in err, (name, err)
        assert not (tmp_path / "in" / "out").exists() and not _leftovers(tmp_path / "in"), name
    assert [p.name for p in (tmp_path / "in" / "full").iterdir()] == ["keep.txt"]
    shutil.rmtree(tmp_path / "in")
