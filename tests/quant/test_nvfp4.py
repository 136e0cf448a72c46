"""NVFP4 (w4a4-nvfp4 / w4a16-nvfp4) against an independent computation of LightX2V's published format.

The test side writes its own NVFP4 from the format (docs/formats.md, "nvfp4"), not with
lightx2v.quant: the e2m1 grid by nearest distance (ties to the even code), block absmax, e4m3
block scales by torch's cast, nibbles packed by hand, and the swizzled scale layout by the offset
formula of LightX2V's quantization kernel (nvfp4_quant_kernels_sm120.cu).
"""

from __future__ import annotations

import re
import types

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from lightx2v.errors import CheckpointError, InputError
from lightx2v.loading.convert import convert_dit
from lightx2v.loading.dit_files import build_dit, inspect_dit_source
from lightx2v.models.wan.dit import WanModel
from lightx2v.models.wan.tiny import randomize_, tiny_dit_config
from lightx2v.quant import QUANT_SCHEMES, QuantLinear, apply_quant, get_scheme, weight_only_for
from lightx2v.quant.nvfp4 import Nvfp4

E4M3 = torch.float8_e4m3fn
GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
SIGNED = torch.cat((GRID, -GRID))  # code -> value (code | 8: negative)

# ---------------------------------------------------------------- the test side's NVFP4


def ref_codes(v: torch.Tensor) -> torch.Tensor:
    """Nearest e2m1 magnitude by distance to each grid value (ties to the even code, beyond 6: 6), sign in bit 3."""
    dist = (v.abs().unsqueeze(-1) - GRID).abs()
    nearest = dist == dist.min(dim=-1, keepdim=True).values
    mag = (nearest.float() * torch.tensor([2.0, 1.0] * 4)).argmax(dim=-1)  # of two nearest, the even code
    return (mag + 8 * torch.signbit(v).long()).to(torch.uint8)


def ref_blocks(x: torch.Tensor, gs: torch.Tensor):
    """x [M, K] fp32, gs fp32 [] -> (codes [M, K], e4m3 scales [M, K/16]) as the kernel's recipe:
    s = e4m3(gs * (blockmax * (1/6))), q = e2m1(x * (gs * (1/s)))."""
    m, k = x.shape
    xb = x.reshape(m, k // 16, 16)
    s = (gs * (xb.abs().amax(-1) * torch.tensor(1 / 6))).clamp(max=448.0).to(E4M3)
    inv = torch.where(s.float() > 0, gs * (1.0 / s.float()), torch.zeros(()))
    return ref_codes(xb * inv.unsqueeze(-1)).reshape(m, k), s


def ref_swizzle(s: torch.Tensor) -> torch.Tensor:
    """[rows, kb] e4m3 -> [round_up(rows, 128), round_up(kb, 4)] at LightX2V's kernel offsets:
    mTile * (kTiles * 512) + kTile * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4."""
    rows, kb = s.shape
    r_pad, k_pad = -(-rows // 128) * 128, -(-kb // 4) * 4
    r, c = torch.arange(rows)[:, None], torch.arange(kb)[None, :]
    off = (r // 128) * (k_pad // 4) * 512 + (c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
    flat = torch.zeros(r_pad * k_pad, dtype=torch.uint8)
    flat[off.reshape(-1)] = s.view(torch.uint8).reshape(-1)
    return flat.view(E4M3).reshape(r_pad, k_pad)


def ref_quantize(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """LightX2V's converter: the weight in bf16, gs = 2688 / max|w| (in bf16), packed low nibble first."""
    wb = w.to(torch.bfloat16).float()
    gs = (2688.0 / wb.abs().max()).to(torch.bfloat16).float()
    codes, s = ref_blocks(wb, gs)
    packed = (codes[:, 0::2].int() + 16 * codes[:, 1::2].int()).to(torch.uint8)
    return {"weight": packed, "weight_scale": ref_swizzle(s), "weight_global_scale": gs}


def ref_dequantize(packed: torch.Tensor, s_rowmajor: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    codes = torch.stack((packed.long() % 16, packed.long() // 16), dim=-1).reshape(packed.shape[0], -1)
    q = SIGNED[codes].reshape(packed.shape[0], -1, 16)
    return (q * s_rowmajor.float().unsqueeze(-1)).reshape(packed.shape[0], -1) / gs


def _bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


def _weight(out: int = 200, inp: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * torch.logspace(-3, 0.5, out)[:, None]  # rows of very different ranges
    w[min(3, out - 1)] = 0.0  # an all-zero row: zero scales, zero values
    return w


# ---------------------------------------------------------------- the format


def test_e2m1_rounding_and_nibble_order():
    # one row whose max is 6 -> gs = 2688 / 6 = 448 and the block scale 448: the values are quantized
    # as they are (all exact in bf16, which the weight is cast to first)
    vals = [6.0, 0.5, 0.25, 0.2578125, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.03125, -0.75, -3.5, -0.1, 2.90625, 0.0]
    t = get_scheme("w4a4-nvfp4").quantize_tensors(torch.tensor([vals]))
    assert t["weight_global_scale"].item() == 448.0 and t["weight_scale"].float()[0, 0].item() == 448.0
    # to nearest, ties to the even code: 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4
    want = [7, 1, 0, 1, 2, 2, 4, 4, 6, 6, 7, 8 | 2, 8 | 6, 8 | 0, 5, 0]
    assert ref_codes(torch.tensor(vals)).tolist() == want  # the test side agrees with the table
    got = t["weight"][0].tolist()
    assert got == [want[2 * j] | (want[2 * j + 1] << 4) for j in range(8)]  # column 2j in the low nibble
    assert got[0] == 0x17  # 6 (code 7) low, 0.5 (code 1) high


@pytest.mark.parametrize("out, inp", [(200, 96), (128, 64), (3, 32), (130, 208)])  # padded rows and block columns
def test_quantize_matches_the_independent_computation(out, inp):
    w = _weight(out, inp)
    got = get_scheme("w4a4-nvfp4").quantize_tensors(w)
    want = ref_quantize(w)
    assert {k: (tuple(v.shape), v.dtype) for k, v in got.items()} == {
        "weight": ((out, inp // 2), torch.uint8),
        "weight_scale": ((-(-out // 128) * 128, -(-(inp // 16) // 4) * 4), E4M3),
        "weight_global_scale": ((), torch.float32)}
    for k in got:
        assert torch.equal(_bits(got[k]), _bits(want[k])), k
    assert torch.all(got["weight"][min(3, out - 1)] == 0)  # the zero row
    # dequantized: the values times their block scales over gs, read back from the swizzled layout
    s_rowmajor = ref_blocks(w.to(torch.bfloat16).float(), want["weight_global_scale"])[1]
    deq = get_scheme("w4a16-nvfp4").dequantize_tensors(got)
    torch.testing.assert_close(deq, ref_dequantize(want["weight"], s_rowmajor, want["weight_global_scale"]),
                               rtol=1e-6, atol=0)


def test_swizzle_round_trip_and_padding():
    from lightx2v.quant.nvfp4 import swizzle_scales, unswizzle_scales

    s = (torch.rand(130, 6) * 400 + 1).to(E4M3)
    stored = swizzle_scales(s)
    assert stored.shape == (256, 8) and torch.equal(_bits(stored), _bits(ref_swizzle(s)))
    assert torch.equal(_bits(unswizzle_scales(stored, 130, 6)), _bits(s))
    assert int(_bits(stored).bool().sum()) == 130 * 6  # the padding is zero


# ---------------------------------------------------------------- compute


def _linear(n_in=512, n_out=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, n_in, generator=g) / n_in**0.5)
        lin.bias.copy_(0.1 * torch.randn(n_out, generator=g))
    return lin, torch.randn(64, n_in, generator=g)


def test_layer_state_dict_has_lightx2v_names():
    lin, _ = _linear(64, 48)
    q = QuantLinear.from_linear(lin, get_scheme("w4a4-nvfp4"))
    sd = q.state_dict()
    assert list(sd) == ["weight", "weight_scale", "weight_global_scale", "input_global_scale", "bias"]
    assert [(tuple(v.shape), v.dtype) for v in sd.values()] == [
        ((48, 32), torch.uint8), ((128, 4), E4M3), ((), torch.float32), ((), torch.float32), ((48,), torch.float32)]
    assert sd["input_global_scale"].item() == 0.0  # not calibrated: computed per call


def test_w4a4_quantizes_activations_per_block():
    lin, x = _linear()
    q = QuantLinear.from_linear(lin, get_scheme("w4a4-nvfp4"))
    t = ref_quantize(lin.weight.detach())
    w = ref_dequantize(t["weight"], ref_blocks(lin.weight.detach().to(torch.bfloat16).float(),
                                               t["weight_global_scale"])[1], t["weight_global_scale"])
    # dynamic: gs = 2688 / max|x| of the call's whole activation
    gs = 2688.0 / x.abs().max()
    codes, s = ref_blocks(x, gs)
    xd = (SIGNED[codes.long()].reshape(64, -1, 16) * s.float().unsqueeze(-1)).reshape(64, -1) / gs
    want = xd @ w.T + lin.bias.detach()
    out = q(x)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5 * want.abs().max().item())
    weight_only = F.linear(x, q.dequantize_weight(), lin.bias)
    assert (out - weight_only).abs().max() > 1e-3 * want.abs().max()  # the activations really are quantized
    # a calibrated input scale (LightX2V's input_global_scale) is used instead, saturating beyond it
    with torch.no_grad():
        q.input_global_scale.fill_(2688.0 / 2.0)
    codes, s = ref_blocks(x, torch.tensor(1344.0))
    xd = (SIGNED[codes.long()].reshape(64, -1, 16) * s.float().unsqueeze(-1)).reshape(64, -1) / 1344.0
    assert xd.abs().max() <= 2.0 + 1e-6 < x.abs().max()
    torch.testing.assert_close(q(x), xd @ w.T + lin.bias.detach(), rtol=0, atol=1e-5 * want.abs().max().item())


# FP4 with one e4m3 scale per 16 values: Gaussian data quantizes with ~9.5% relative RMS error
# (the e2m1 steps are 1/12 to 1/3 of the block max); a random linear's output errs as much for
# weight-only and sqrt(2) times that with the activations quantized too. Measured over 5 seeds:
# 0.094-0.096 (w4a16), 0.133-0.135 (w4a4); the bounds leave ~25% room. Block scales read without
# the swizzle (row-major) give ~0.35, a global scale off by 2 ~0.5.
@pytest.mark.parametrize("name, bound", [("w4a16-nvfp4", 0.12), ("w4a4-nvfp4", 0.17)])
def test_error_of_a_random_linear_is_bounded(name, bound):
    lin, x = _linear(seed=7)
    q = QuantLinear.from_linear(lin, get_scheme(name))
    ref = lin(x).detach()
    err = ((q(x) - ref).norm() / ref.norm()).item()
    assert 0.05 < err <= bound, err
    with torch.no_grad():  # sensitivity: the global scale doubled
        q.weight_global_scale.mul_(2)
    assert ((q(x) - ref).norm() / ref.norm()).item() > 0.45


def test_bf16_compute_and_lora_merge_requantizes():
    lin, x = _linear(64, 48)
    q = QuantLinear.from_linear(lin, get_scheme("w4a16-nvfp4"), compute_dtype=torch.bfloat16)
    out = q(x)
    assert out.dtype == torch.bfloat16
    want = F.linear(x, q.dequantize_weight(), lin.bias)
    assert (out.float() - want).norm() <= 2**-7 * want.norm()
    with torch.no_grad():
        q.input_global_scale.fill_(5.0)  # a calibrated input scale survives a merge
    storage = q.weight.data_ptr()
    merged = q.dequantize_weight() + 0.05 * torch.randn(48, 4) @ torch.randn(4, 64)
    q.set_weight(merged)
    assert q.weight.data_ptr() == storage and q.input_global_scale.item() == 5.0
    for k, v in ref_quantize(merged).items():
        assert torch.equal(_bits(getattr(q, k).detach()), _bits(v)), k


def test_shapes_nvfp4_cannot_take_are_refused():
    model = nn.Sequential(nn.Linear(40, 32))
    with pytest.raises(InputError, match=r"w4a4-nvfp4 cannot quantize 0: NVFP4 scales blocks of 16 input features; "
                                         r"in_features 40 is not a multiple of 16"):
        apply_quant(model, "w4a4-nvfp4", targets=["0"])


# ---------------------------------------------------------------- devices


def test_w4a4_needs_fp4_tensor_cores_and_says_so(monkeypatch):
    scheme, cuda = get_scheme("w4a4-nvfp4"), torch.device("cuda")
    assert scheme.available(torch.device("cpu")) is None  # the reference
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    reason = scheme.available(cuda)
    assert "sm100+" in reason and "sm90" in reason and "w4a16-nvfp4" in reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    assert "no FP4 GEMM" in scheme.available(cuda) and "w4a16-nvfp4" in scheme.available(cuda)
    assert get_scheme("w4a16-nvfp4").available(cuda) is None
    assert weight_only_for(scheme).name == "w4a16-nvfp4"
    assert weight_only_for(get_scheme("w8a8-fp8")).name == "w8a16-fp8"  # the others' siblings unchanged


def test_asking_for_w4a4_on_a_gpu_without_fp4_is_refused(monkeypatch):
    from lightx2v.api import make_engine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with pytest.raises(InputError, match=r"quant 'w4a4-nvfp4' cannot run on cuda: FP4 tensor cores need compute "
                                         r"capability sm100\+ \(Blackwell\); this GPU is sm90: use the weight-only"):
        make_engine(device="cuda", quant="w4a4-nvfp4")


def test_a_prequantized_layer_computes_weight_only_with_a_warning(monkeypatch):
    from lightx2v.runtime.engine import check_quant_compute

    model = apply_quant(nn.Sequential(nn.Linear(32, 16)), "w4a4-nvfp4", targets=["0"])
    monkeypatch.setattr(Nvfp4, "available", lambda self, device: "FP4 tensor cores need sm100+ (test)")
    pipe = types.SimpleNamespace(components={"dit": model}, transformer_names=("dit",))
    with pytest.warns(UserWarning, match=r"w4a4-nvfp4 weights computed as w4a16-nvfp4 \(FP4 tensor cores"):
        check_quant_compute(pipe, torch.device("cpu"))
    assert model[0].scheme.name == "w4a16-nvfp4"


def test_cli_choices():
    from lightx2v.choices import QUANT_CHOICES

    assert {"w4a4-nvfp4", "w4a16-nvfp4"} <= set(QUANT_CHOICES) <= set(QUANT_SCHEMES)


# ---------------------------------------------------------------- LightX2V nvfp4 DiT files

CFG = tiny_dit_config()
_LX_QUANTIZED = re.compile(r"blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.([qkvo]|k_img|v_img)|ffn\.[02])\.weight")


@pytest.fixture(scope="module")
def tiny():
    model = randomize_(WanModel(CFG), seed=5).eval()
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    inputs = (torch.randn(1, 16, 1, 4, 4, generator=g), torch.tensor([600.0]), torch.randn(1, 7, 32, generator=g))
    with torch.no_grad():
        ref = model(*inputs)
    return sd, inputs, ref


def lightx2v_nvfp4_file(sd, calibrated: bool = False):
    """LightX2V's converter output for the block linears (`--linear_type nvfp4`); `calibrated`:
    after its add_scale_to_models.py (input_global_scale + alpha instead of weight_global_scale)."""
    out, written = {}, {}
    for k, w in sd.items():
        if not _LX_QUANTIZED.fullmatch(k):
            out[k] = w
            continue
        t = ref_quantize(w)
        written[k[: -len(".weight")]] = t
        out[k], out[k + "_scale"] = t["weight"], t["weight_scale"]
        if calibrated:
            igs = torch.tensor(2688.0 / 3.0)
            out[k.replace(".weight", ".input_global_scale")] = igs
            out[k.replace(".weight", ".alpha")] = 1.0 / (igs * t["weight_global_scale"])
        else:
            out[k + "_global_scale"] = t["weight_global_scale"]
    return out, written


def _build(path, **kw):
    return build_dit(inspect_dit_source(path), dtype=torch.float32, device="cpu", expected=CFG, **kw)


def test_a_lightx2v_nvfp4_file_loads_as_quantizing_at_load(tiny, tmp_path):
    sd, inputs, ref = tiny
    qsd, written = lightx2v_nvfp4_file(sd)
    save_file(qsd, str(tmp_path / "wan2.1_t2v_tiny_nvfp4_lightx2v.safetensors"))
    save_file(sd, str(tmp_path / "float.safetensors"))
    src = inspect_dit_source(tmp_path / "wan2.1_t2v_tiny_nvfp4_lightx2v.safetensors")
    assert src.quant == "w4a4-nvfp4" and sorted(src.quantized) == sorted(written) and len(written) == 20
    assert src.config == inspect_dit_source(tmp_path / "float.safetensors").config  # shapes read as [out, in]
    model = _build(src.path)
    at_load = _build(tmp_path / "float.safetensors", quant="w4a4-nvfp4")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert sorted(layers) == sorted(written)  # embeddings, time projection, head: not declared, untouched
    for name, t in written.items():
        m = layers[name]
        assert m.scheme.name == "w4a4-nvfp4" and m.weight.dtype == torch.uint8  # the file's bytes, no float copy
        for k, v in t.items():
            assert torch.equal(_bits(getattr(m, k).detach()), _bits(v)), (name, k)
    own, again = model.state_dict(), at_load.state_dict()
    assert own.keys() == again.keys()
    for k, v in own.items():
        assert torch.equal(_bits(v), _bits(again[k])), k
        if k in sd and not _LX_QUANTIZED.fullmatch(k):
            assert torch.equal(v, sd[k]), k  # sensitive / undeclared layers exactly as the float file
    assert isinstance(model.head.head, nn.Linear) and isinstance(model.text_embedding[0], nn.Linear)
    with torch.no_grad():
        out, out2 = model(*inputs), at_load(*inputs)
    torch.testing.assert_close(out, out2, rtol=0, atol=1e-6 * out2.abs().max().item())
    # the float model it came from, within 4-bit error (measured 6.8% of max|ref| for this tiny DiT)
    err = (out - ref).abs().max()
    assert 1e-3 * ref.abs().max() < err <= 0.12 * ref.abs().max()


def test_a_calibrated_file_uses_its_input_scale(tiny, tmp_path):
    sd, inputs, _ = tiny
    qsd, written = lightx2v_nvfp4_file(sd, calibrated=True)
    path = tmp_path / "calibrated.safetensors"
    save_file(qsd, str(path))
    model = _build(path)
    m = model.blocks[1].ffn[0]
    assert m.input_global_scale.item() == pytest.approx(896.0)
    torch.testing.assert_close(m.weight_global_scale, written["blocks.1.ffn.0"]["weight_global_scale"], rtol=1e-6, atol=0)


def test_wrong_nvfp4_files_are_named(tiny, tmp_path):
    sd = tiny[0]
    qsd, _ = lightx2v_nvfp4_file(sd)
    no_gs = {k: v for k, v in qsd.items() if k != "blocks.0.ffn.0.weight_global_scale"}
    save_file(no_gs, str(tmp_path / "a.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks.0.ffn.0 is NVFP4 without blocks.0.ffn.0.weight_global_scale"):
        inspect_dit_source(tmp_path / "a.safetensors")
    # q [64, 64]: scales [out, in/16] = [64, 4] unpadded, where LightX2V stores [128, 4] (swizzled)
    rowmajor = dict(qsd, **{"blocks.0.self_attn.q.weight_scale": torch.zeros(64, 4, dtype=E4M3)})
    save_file(rowmajor, str(tmp_path / "b.safetensors"))
    with pytest.raises(CheckpointError, match=r"LightX2V's NVFP4 expects blocks.0.self_attn.q.weight_scale "
                                              r"float8_e4m3fn \[128, 4\] \(swizzled\), got float8_e4m3fn \[64, 4\]"):
        inspect_dit_source(tmp_path / "b.safetensors")


def test_convert_writes_lightx2v_nvfp4_and_copies_it(tiny, tmp_path):
    sd, inputs, _ = tiny
    save_file(sd, str(tmp_path / "float.safetensors"))
    convert_dit(tmp_path / "float.safetensors", tmp_path / "q", quant="w4a4-nvfp4")
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "q" / "diffusion_pytorch_model.safetensors"))
    want, _ = lightx2v_nvfp4_file(sd)
    assert got.keys() == want.keys()  # LightX2V's names, no input_global_scale (none calibrated)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(_bits(got[k]), _bits(v)), k
    convert_dit(tmp_path / "q", tmp_path / "blocks", to="blocks")  # a pre-quantized source, copied
    src = inspect_dit_source(tmp_path / "blocks")
    assert src.quant == "w4a4-nvfp4" and len(src.quantized) == 20
    copied = {}
    for f in src.files:
        copied |= load_file(str(f))
    assert copied.keys() == want.keys() and all(torch.equal(_bits(copied[k]), _bits(v)) for k, v in want.items())
    lora = {"diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.randn(2, 64),
            "diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.randn(128, 2)}
    save_file(lora, str(tmp_path / "lora.safetensors"))
    with pytest.raises(InputError, match=r"is w4a4-nvfp4: convert cannot merge a LoRA into its layers"):
        convert_dit(tmp_path / "q", tmp_path / "merged", loras=[(tmp_path / "lora.safetensors", 1.0)])
    assert not (tmp_path / "merged").exists()
    # diffusers names: the scales follow their weight (`attn1.to_q.weight_global_scale`) and read back the same
    convert_dit(tmp_path / "q", tmp_path / "diffusers", to="diffusers")
    names = load_file(str(tmp_path / "diffusers" / "diffusion_pytorch_model.safetensors"))
    assert "blocks.0.attn1.to_q.weight_global_scale" in names and "blocks.0.ffn.net.0.proj.weight_scale" in names
    src = inspect_dit_source(tmp_path / "diffusers")
    assert (src.key_format, src.quant, len(src.quantized)) == ("diffusers", "w4a4-nvfp4", 20)
    back = build_dit(src, dtype=torch.float32, device="cpu").state_dict()
    own = _build(tmp_path / "q").state_dict()
    assert back.keys() == own.keys() and all(torch.equal(_bits(back[k]), _bits(v)) for k, v in own.items())


def test_a_prequantized_nvfp4_model_switches_compute_without_requantizing():
    from lightx2v.runtime.engine import quantize

    model = apply_quant(nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 32)), "w4a4-nvfp4", targets=["0", "1"])
    before = {k: _bits(v).clone() for k, v in model.state_dict().items()}
    pipe = types.SimpleNamespace(components={"dit": model}, transformer_names=("dit",))
    assert quantize(pipe, "w4a16-nvfp4", torch.float32) == ["dit: 2 layers (w4a4-nvfp4 file, computed as w4a16-nvfp4)"]
    assert all(torch.equal(_bits(v), before[k]) for k, v in model.state_dict().items())
    with pytest.raises(InputError, match=r"already quantized \(w4a16-nvfp4\); it cannot be quantized as w8a8-int8"):
        quantize(pipe, "w8a8-int8", torch.float32)
