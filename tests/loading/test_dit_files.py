"""DiT weights from single files, indexes, block-split folders and pre-quantized files.

Every layout is written from the same tiny random DiT with the real file and key names of its
source (LightX2V converter, ComfyUI, diffusers), and must load to the same outputs as the plain
official file: bit-exact for float files, equal to the dequantized-weights model for quantized ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil

import pytest
import torch
from safetensors.torch import save_file

from lightx2v.errors import CheckpointError
from lightx2v.loading.detect import detect
from lightx2v.loading.dit_files import build_dit, inspect_dit_source, load_dit_weights
from lightx2v.models.wan.dit_format import check_dit_matches, dit_config_from_state_dict
from lightx2v.models.wan.dit import WanDiTConfig, WanModel
from lightx2v.models.wan.tiny import randomize_, tiny_dit_config
from lightx2v.quant import QuantLinear, apply_quant, get_scheme

CFG = tiny_dit_config()
COMFY = "model.diffusion_model."


@pytest.fixture(scope="module")
def tiny():
    model = randomize_(WanModel(CFG), seed=5).eval()
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    inputs = (torch.randn(1, 16, 1, 4, 4, generator=g), torch.tensor([600.0]), torch.randn(1, 7, 32, generator=g))
    with torch.no_grad():
        ref = model(*inputs)
    return sd, inputs, ref


def _save(path, sd):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _run(path, inputs, expected=CFG):
    model = build_dit(inspect_dit_source(path), dtype=torch.float32, device="cpu", expected=expected)
    with torch.no_grad():
        return model(*inputs), model


def _same(got, model, sd, ref):
    """Bit-identical weights; outputs equal up to the CPU kernels' alignment-dependent summation
    order (tensors mapped from different files start at different offsets)."""
    own = model.state_dict()
    assert own.keys() == sd.keys() and all(torch.equal(own[k], v) for k, v in sd.items())
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6 * ref.abs().max().item())


def _float_model_out(sd, inputs, cfg=CFG):
    with torch.device("meta"):
        model = WanModel(cfg)
    load_dit_weights(model, sd, dtype=torch.float32)
    with torch.no_grad():
        return model.eval()(*inputs)


# ---------------------------------------------------------------- float layouts, bit-exact


def test_official_single_file(tiny, tmp_path):
    sd, inputs, ref = tiny
    path = _save(tmp_path / "wan2.1_t2v_tiny_lightx2v_4step.safetensors", sd)
    src = inspect_dit_source(path)
    assert (src.kind, src.key_format, src.prefix, src.quant) == ("single-file", "official", "", None)
    assert src.files == (path,) and src.num_tensors == len(sd) and src.dtypes == (("float32", len(sd)),)
    assert src.num_params == sum(v.numel() for v in sd.values())
    assert dit_config_from_state_dict(src.shapes, base=CFG) == CFG
    assert src.looks_like == "Wan2.1 t2v DiT (dim 64, 2 layers)"
    _same(*_run(path, inputs), sd, ref)
    torch.save(sd, tmp_path / "wan_tiny.pth")  # a torch.save'd state dict reads the same way (mmap)
    _same(*_run(tmp_path / "wan_tiny.pth", inputs), sd, ref)


def test_comfyui_prefixed_single_file(tiny, tmp_path):
    sd, inputs, ref = tiny
    path = _save(tmp_path / "wan2.1_t2v_tiny_bf16.safetensors", {COMFY + k: v for k, v in sd.items()})
    src = inspect_dit_source(path)
    assert (src.key_format, src.prefix, src.ignored) == ("comfyui", COMFY, ())
    assert set(src.shapes) == set(sd)
    _same(*_run(path, inputs), sd, ref)


def test_diffusers_keyed_single_file(tiny_diffusers_dir, tiny_official_dir, tmp_path, tiny):
    inputs = tiny[1]
    expected = detect(tiny_official_dir).dit
    single = shutil.copy(tiny_diffusers_dir / "transformer" / "diffusion_pytorch_model.safetensors",
                         tmp_path / "wan2.1_t2v_tiny_diffusers.safetensors")
    src = inspect_dit_source(single)
    assert (src.kind, src.key_format) == ("single-file", "diffusers")
    official, model = _run(tiny_official_dir / "diffusion_pytorch_model.safetensors", inputs, expected)
    _same(*_run(single, inputs, expected), model.state_dict(), official)
    # the folders themselves: official root, and a diffusers pipeline root (its transformer/)
    assert inspect_dit_source(tiny_official_dir).kind == "folder"
    root = inspect_dit_source(tiny_diffusers_dir)
    assert (root.kind, root.key_format, root.files[0].parent.name) == ("folder", "diffusers", "transformer")


def test_sharded_with_the_index_given(tiny, tmp_path):
    sd, inputs, ref = tiny
    keys = sorted(sd)
    names = [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    parts = {names[0]: keys[: len(keys) // 2], names[1]: keys[len(keys) // 2:]}
    for name, ks in parts.items():
        _save(tmp_path / name, {k: sd[k] for k in ks})
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: n for n, ks in parts.items() for k in ks}}))
    src = inspect_dit_source(index)
    assert src.kind == "sharded" and [f.name for f in src.files] == names
    _same(*_run(index, inputs), sd, ref)
    (tmp_path / names[1]).unlink()
    with pytest.raises(CheckpointError, match="00002-of-00002.safetensors listed in .* is missing"):
        inspect_dit_source(index)


def _write_blocks(folder, sd):
    """As LightX2V's converter --save_by_block: full official keys, block_<i> + non_block, and its index."""
    folder.mkdir()
    groups: dict[str, dict] = {}
    for k, v in sd.items():
        m = re.search(r"blocks\.(\d+)\.", k)
        groups.setdefault(f"block_{m[1]}.safetensors" if m else "non_block.safetensors", {})[k] = v
    for name, part in groups.items():
        _save(folder / name, part)
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: n for n, part in groups.items() for k in part}}))
    return folder


def test_block_split_folder(tiny, tmp_path):
    sd, inputs, ref = tiny
    folder = _write_blocks(tmp_path / "wan_blocks", sd)
    src = inspect_dit_source(folder)
    assert src.kind == "blocks"
    assert [f.name for f in src.files] == ["block_0.safetensors", "block_1.safetensors", "non_block.safetensors"]
    _same(*_run(folder, inputs), sd, ref)
    with pytest.raises(CheckpointError, match="part of a block-split DiT .* pass the folder"):
        inspect_dit_source(folder / "block_1.safetensors")
    (folder / "non_block.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lacks non_block.safetensors"):
        inspect_dit_source(folder)


# ---------------------------------------------------------------- pre-quantized files


def _quantize_file_sd(sd, scheme_name, select=WanModel._quant_linears, scale_dtype=torch.float32):
    """(LightX2V-style quantized state dict, the same weights dequantized in fp32)."""
    scheme = get_scheme(scheme_name)
    qsd, deq = dict(sd), dict(sd)
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 2 and re.fullmatch(select, k[: -len(".weight")]):
            q, s = scheme.quantize(v)
            qsd[k], qsd[k + "_scale"] = q, s.to(scale_dtype)
            deq[k] = scheme.dequantize(q, s.to(scale_dtype))
    return qsd, deq


# LightX2V's converter (tools/convert/converter.py, `--quantized --linear_dtype ...`), written
# here from its published format, not with lightx2v.quant: the 2-D weights of the block linears
# (self_attn / cross_attn q, k, v, o, k_img, v_img; ffn.0, ffn.2) become
#   int8:  scale = max(|w| over the row, 1e-5) / 127,  weight = round(w / scale).clamp(-128, 127)
#   fp8:   scale = max(|w| over the row, 1e-5) / 448,  weight = (w / scale).clamp(-448, 448) -> e4m3fn
# with the scale stored as `<name>.weight_scale` [out, 1]; everything else stays float.
_LX_QUANTIZED = re.compile(r"blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.([qkvo]|k_img|v_img)|ffn\.[02])\.weight")


def _lightx2v_file_sd(sd, qdtype):
    """(LightX2V-format state dict, {module: (weight, scale)} as written, the dequantized state dict).
    As the converter, the math is done in the source weights' dtype (a bf16 source: bf16 scales)."""
    qmax = 127.0 if qdtype == torch.int8 else 448.0
    out, written, deq = {}, {}, {}
    for k, w in sd.items():
        if not _LX_QUANTIZED.fullmatch(k):
            out[k] = deq[k] = w
            continue
        assert w.ndim == 2, k
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / qmax  # [out, 1]
        if qdtype == torch.int8:
            wq = torch.round(w / scale).clamp(-128, 127).to(torch.int8)
        else:
            wq = (w / scale).clamp(-448, 448).float().to(torch.float8_e4m3fn)  # round to nearest (even)
        out[k], out[k + "_scale"] = wq, scale
        written[k[: -len(".weight")]] = (wq, scale)
        deq[k] = wq.float() * scale.float()  # what LightX2V computes with (the scale in fp32)
    return out, written, deq


def _bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


@pytest.fixture(scope="module")
def tiny_i2v():
    cfg = dataclasses.replace(CFG, model_type="i2v", in_dim=36)
    model = randomize_(WanModel(cfg), seed=6).eval()
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    inputs = (torch.randn(1, 16, 1, 4, 4, generator=g), torch.tensor([600.0]), torch.randn(1, 7, 32, generator=g),
              torch.randn(1, 257, 1280, generator=g), torch.randn(1, 20, 1, 4, 4, generator=g))
    with torch.no_grad():
        ref = model(*inputs)
    return sd, inputs, ref, cfg


# loose: the quantized model vs the float model it came from. Per weight, int8 rounds by at most
# half a step of absmax/127 (<= 0.4% of the row's largest weight), e4m3 to 3 mantissa bits
# (<= 6% of the weight); through ~10 linears these errors mostly average out over each dot
# product. Measured: 0.5% (int8), 0.7% (int8 from bf16), 1.3% (fp8 t2v), 2.3% (fp8 i2v) of
# max|ref|; the bounds leave 2.5-4x room and are far below what a missing or misapplied scale gives.
@pytest.mark.parametrize("task, scheme, qdtype, src_dtype, loose", [
    ("t2v", "w8a8-int8", torch.int8, torch.float32, 0.02),
    ("t2v", "w8a8-fp8", torch.float8_e4m3fn, torch.float32, 0.06),
    ("t2v", "w8a8-int8", torch.int8, torch.bfloat16, 0.02),  # a bf16 source: bf16 scales and float tensors
    ("i2v", "w8a8-fp8", torch.float8_e4m3fn, torch.float32, 0.06),  # k_img / v_img quantized too
])
def test_lightx2v_quantized_single_file(request, tmp_path, task, scheme, qdtype, src_dtype, loose):
    if task == "t2v":
        (sd, inputs, ref), cfg = request.getfixturevalue("tiny"), CFG
    else:
        sd, inputs, ref, cfg = request.getfixturevalue("tiny_i2v")
    qsd, written, deq = _lightx2v_file_sd({k: v.to(src_dtype) for k, v in sd.items()}, qdtype)
    blocks = [f"blocks.{i}.{m}" for i in range(cfg.num_layers)
              for m in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                        "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
              + (("cross_attn.k_img", "cross_attn.v_img") if task == "i2v" else ())]
    assert sorted(written) == sorted(blocks)  # the writer's selection is the one of the format
    path = _save(tmp_path / f"wan2.1_{task}_tiny_{scheme}_lightx2v.safetensors", qsd)

    src = inspect_dit_source(path)
    assert (src.key_format, src.quant, src.config.model_type) == ("official", scheme, task)
    assert sorted(src.quantized) == sorted(blocks)
    assert dict(src.dtypes)[str(qdtype).replace("torch.", "")] == len(blocks)

    out, model = _run(path, inputs, cfg)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert sorted(layers) == sorted(blocks)  # embeddings, time projection, head stay nn.Linear
    for name, (wq, scale) in written.items():
        m = layers[name]
        assert m.scheme.name == scheme and m.weight.dtype == qdtype, name
        assert torch.equal(_bits(m.weight), _bits(wq)), name  # the file's bytes, not requantized
        assert m.weight_scale.dtype == torch.float32 and m.weight_scale.shape == (wq.shape[0], 1), name
        assert torch.equal(m.weight_scale, scale.float()), name
    own, quantized_keys = model.state_dict(), {f"{n}.{t}" for n in written for t in ("weight", "weight_scale")}
    for k, v in qsd.items():
        if k not in quantized_keys:
            assert torch.equal(own[k], v.float()), k  # float tensors (biases, norms, embeddings) as in the file

    # the file's model: a float WanModel with the weights dequantized by hand (same fp32 math,
    # so only the CPU kernels' alignment-dependent summation order differs) computes as the
    # weight-only scheme of this storage; the w8a8 compute (8-bit activations) is within its error
    want = _float_model_out(deq, inputs, cfg)
    torch.testing.assert_close(out, want, rtol=0, atol=5e-2 * want.abs().max().item())
    from lightx2v.quant import weight_only_for

    for m in layers.values():
        m.scheme = weight_only_for(m.scheme)
    with torch.no_grad():
        weight_only = model(*inputs)
    torch.testing.assert_close(weight_only, want, rtol=0, atol=1e-6 * want.abs().max().item())
    # the float model it was made from, up to quantization error (which is really there)
    err = (out - ref).abs().max()
    assert 1e-4 * ref.abs().max() < err <= loose * ref.abs().max()


def test_comfyui_scaled_fp8_file(tiny, tmp_path):
    """Comfy-Org's *_fp8_scaled layout: every Linear (embeddings and head too) float8 with a scalar
    `scale_weight` and `scale_input`, the `scaled_fp8` marker, under model.diffusion_model."""
    sd, inputs, ref = tiny
    linears = r"(blocks\.\d+\.(self_attn|cross_attn)\.[qkvo]|blocks\.\d+\.ffn\.[02]|text_embedding\.[02]|time_embedding\.[02]|time_projection\.1|head\.head)"
    qsd, deq = _quantize_file_sd(sd, "fp8-scaled", select=linears)
    comfy = {}
    for k, v in qsd.items():
        comfy[COMFY + (k[: -len(".weight_scale")] + ".scale_weight" if k.endswith(".weight_scale") else k)] = v
        if k.endswith(".weight_scale"):
            comfy[COMFY + k[: -len(".weight_scale")] + ".scale_input"] = torch.ones(())
    comfy[COMFY + "scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    path = _save(tmp_path / "wan2.1_t2v_tiny_fp8_scaled.safetensors", comfy)
    src = inspect_dit_source(path)
    assert (src.key_format, src.quant, len(src.quantized)) == ("comfyui", "fp8-scaled", 26)
    assert COMFY + "scaled_fp8" in src.ignored and COMFY + "head.head.scale_input" in src.ignored
    out, model = _run(path, inputs)
    assert model.time_embedding[0].weight_scale.shape == () and model.time_embedding[0].compute_dtype == torch.float32
    torch.testing.assert_close(out, _float_model_out(deq, inputs), rtol=1e-6, atol=1e-6)
    assert (out - ref).abs().max() <= 0.1 * ref.abs().max()


def test_plain_fp8_cast_loads_with_scale_one(tiny, tmp_path):
    sd, inputs, _ = tiny
    fp8 = {k: (v.to(torch.float8_e4m3fn) if k.endswith(".weight") and v.ndim == 2 and k.startswith("blocks.") else v)
           for k, v in sd.items()}
    path = _save(tmp_path / "wan2.1_t2v_tiny_fp8_e4m3fn.safetensors", fp8)
    src = inspect_dit_source(path)
    assert src.quant == "fp8-scaled" and len(src.quantized) == 20
    out, _ = _run(path, inputs)
    want = _float_model_out({k: v.float() for k, v in fp8.items()}, inputs)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


def test_a_float_file_quantizes_while_loading(tiny):
    sd, inputs, _ = tiny
    with torch.device("meta"):
        model = WanModel(CFG)
    apply_quant(model, "w8a8-int8", compute_dtype=torch.float32)
    load_dit_weights(model, sd, dtype=torch.float32)
    loaded = apply_quant(randomize_(WanModel(CFG), seed=5).eval(), "w8a8-int8")  # quantized after loading
    for k, v in loaded.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_mixed_or_unscaled_int8_is_an_error(tiny, tmp_path):
    sd = tiny[0]
    qsd, _ = _quantize_file_sd(sd, "w8a8-int8")
    fp8, _ = _quantize_file_sd(sd, "w8a8-fp8")
    mixed = {**qsd, "blocks.1.ffn.2.weight": fp8["blocks.1.ffn.2.weight"]}
    with pytest.raises(CheckpointError, match=r"mixes quantization schemes: w8a8-fp8 \(blocks.1.ffn.2\), w8a8-int8"):
        inspect_dit_source(_save(tmp_path / "mixed.safetensors", mixed))
    del qsd["blocks.0.ffn.0.weight_scale"]
    with pytest.raises(CheckpointError, match="blocks.0.ffn.0.weight is torch.int8 without a weight_scale"):
        inspect_dit_source(_save(tmp_path / "noscale.safetensors", qsd))


# ---------------------------------------------------------------- errors for people


def test_truncated_and_corrupt_files(tiny, tmp_path):
    good = _save(tmp_path / "good.safetensors", tiny[0]).read_bytes()
    cut = tmp_path / "wan_cut.safetensors"
    cut.write_bytes(good[:-100])
    with pytest.raises(CheckpointError, match=r"wan_cut.safetensors is truncated: tensor .* download it again"):
        inspect_dit_source(cut)
    cut.write_bytes(good[:60])
    with pytest.raises(CheckpointError, match=r"wan_cut.safetensors is truncated or not a safetensors file: its header length"):
        inspect_dit_source(cut)
    bad = tmp_path / "wan_bad.safetensors"
    bad.write_bytes(good[:8] + b"#" * 16 + good[24:])
    with pytest.raises(CheckpointError, match=r"wan_bad.safetensors has a corrupt safetensors header \(not valid JSON\)"):
        inspect_dit_source(bad)
    bad.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="too short to be a safetensors file"):
        inspect_dit_source(bad)


@pytest.mark.parametrize("keys, what", [
    (["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.middle_block.0.in_layers.0.weight",
      "model.diffusion_model.output_blocks.0.0.weight"], "a Stable Diffusion UNet"),
    (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "img_in.weight"], "a Flux transformer"),
    (["diffusion_model.blocks.0.self_attn.q.lora_A.weight", "diffusion_model.blocks.0.self_attn.q.lora_B.weight"], "a LoRA"),
    (["encoder.downsamples.0.residual.0.gamma", "decoder.upsamples.0.residual.0.gamma", "conv1.weight"], "a Wan VAE"),
    (["foo.bar.weight", "foo.baz.weight"], None),
])
def test_a_file_of_another_family(tmp_path, keys, what):
    path = _save(tmp_path / "model.safetensors", {k: torch.zeros(2, 2) for k in keys})
    expected = f"it looks like {what}" if what else r"its 2 tensors start with: foo.bar, foo.baz"
    with pytest.raises(CheckpointError, match=rf"model.safetensors is not a Wan2.1 or Wan2.2 or Qwen-Image or HunyuanVideo-1.5 DiT checkpoint.*{expected}"):
        inspect_dit_source(path)


def test_a_qwen_image_transformer_is_its_family_now(tmp_path):
    """Qwen-Image is registered: its transformer file is read as one (here an incomplete one)."""
    keys = ["transformer_blocks.0.img_mod.1.weight", "img_in.weight", "txt_norm.weight"]
    path = _save(tmp_path / "model.safetensors", {k: torch.zeros(2, 2) for k in keys})
    with pytest.raises(CheckpointError, match="is it a complete Qwen-Image DiT"):
        inspect_dit_source(path)


def test_a_file_of_another_size(tmp_path, tiny):
    other = WanDiTConfig(model_type="t2v", in_dim=16, dim=96, ffn_dim=128, num_heads=3, num_layers=3, text_dim=32, freq_dim=32)
    path = _save(tmp_path / "other.safetensors", randomize_(WanModel(other)).state_dict())
    with pytest.raises(CheckpointError, match=r"other.safetensors is a Wan2.1 t2v DiT \(dim 96, 3 layers\); the folder's "
                                              r"config is a Wan2.1 t2v DiT \(dim 64, 2 layers\) \(dim 96 vs 64"):
        _run(path, tiny[1])


def _sparse_header_only_file(path, cfg: WanDiTConfig):
    """A bf16 safetensors file of a full-size model whose data is a hole: only the header is real."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WanModel(cfg).state_dict().items()}
    header, offset = {}, 0
    for k, s in sorted(shapes.items()):
        n = 2 * math.prod(s)
        header[k] = {"dtype": "BF16", "shape": list(s), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def test_a_14b_i2v_file_for_a_1_3b_folder_is_named(tmp_path):
    big = WanDiTConfig(model_type="i2v", in_dim=36, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
    small = WanDiTConfig(model_type="t2v", in_dim=16, dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
    src = inspect_dit_source(_sparse_header_only_file(tmp_path / "wan2.1_i2v_480p_14B_bf16.safetensors", big))
    assert src.config == big and src.looks_like == "Wan2.1 14B i2v DiT (dim 5120, 40 layers)"
    assert src.num_params > 16e9 and src.dtypes == (("bfloat16", src.num_tensors),)
    with pytest.raises(CheckpointError, match=r"wan2.1_i2v_480p_14B_bf16.safetensors is a Wan2.1 14B i2v DiT \(dim 5120, "
                                              r"40 layers\); the folder's config is a Wan2.1 1.3B t2v DiT \(dim 1536, 30 layers\)"):
        build_dit(src, dtype=torch.bfloat16, expected=small)
    check_dit_matches(src.config, big, "x")  # the same model: no error
