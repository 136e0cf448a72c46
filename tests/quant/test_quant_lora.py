"""Dynamic LoRA on a DiT quantized with lightx2v.quant (the real QuantLinear, not a stand-in).

The oracle is a plain float WanModel (nn.Linear everywhere) whose weights are the quantized
layers' bytes dequantized by hand (w_q * scale) plus strength * alpha/rank * up @ down, the
factors read from the LoRA file itself.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lightx2v.loading.lora import load_lora
from lightx2v.models.wan.dit import WanModel
from lightx2v.models.wan.tiny import randomize_, tiny_dit_config
from lightx2v.quant import QuantLinear, apply_quant
from lightx2v.runtime.lora import apply_dynamic_lora

CFG = tiny_dit_config()
RANK = 4
# square and non-square layers, in self / cross attention and the ffn
# official name -> (diffusers name, weight shape [out, in])
TARGETS = {
    "blocks.0.self_attn.q": ("blocks.0.attn1.to_q", (CFG.dim, CFG.dim)),
    "blocks.0.cross_attn.v": ("blocks.0.attn2.to_v", (CFG.dim, CFG.dim)),
    "blocks.1.ffn.0": ("blocks.1.ffn.net.0.proj", (CFG.ffn_dim, CFG.dim)),
    "blocks.1.ffn.2": ("blocks.1.ffn.net.2", (CFG.dim, CFG.ffn_dim)),
}


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([700.0]), torch.randn(1, 6, 32, generator=g)


@torch.no_grad()
def _out(model):
    return model(*_inputs())


def _write_lora(path, layout: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """A LoRA file on TARGETS; returns {official module: (down, up, alpha / rank)} as written."""
    g = torch.Generator().manual_seed(9)
    sd, pairs = {}, {}
    for n, (name, (diffusers_name, (out_f, in_f))) in enumerate(TARGETS.items()):
        down = torch.randn(RANK, in_f, generator=g) / in_f**0.5
        up = torch.randn(out_f, RANK, generator=g) * 0.5 / RANK**0.5
        if layout == "official":  # LightX2V / ComfyUI: diffusion_model. + official names, alpha
            alpha = float(2 + 3 * n)  # scale alpha / rank != 1
            key = f"diffusion_model.{name}"
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
            sd[f"{key}.alpha"] = torch.tensor(alpha)
            pairs[name] = (down, up, alpha / RANK)
        else:  # diffusers / PEFT keys with no alpha and no adapter metadata: scale 1
            key = f"transformer.{diffusers_name}"
            sd[f"{key}.lora_A.weight"], sd[f"{key}.lora_B.weight"] = down, up
            pairs[name] = (down, up, 1.0)
    save_file(sd, str(path))
    return pairs


def _float_reference(quantized: WanModel, pairs: dict, strength: float) -> WanModel:
    """A float WanModel: dequantized weights (by hand) + strength * scale * up @ down on TARGETS."""
    sd = {}
    for k, v in quantized.state_dict().items():
        if not k.endswith(".weight_scale"):
            sd[k] = v
    for name, m in quantized.named_modules():
        if isinstance(m, QuantLinear):
            w = m.weight.float() * m.weight_scale.float()  # [out, in] * [out, 1]
            if name in pairs:
                down, up, scale = pairs[name]
                w = w + strength * scale * (up @ down)
            sd[f"{name}.weight"] = w
    ref = WanModel(CFG)
    ref.load_state_dict(sd, strict=True)
    assert not any(isinstance(m, QuantLinear) for m in ref.modules())
    return ref.eval()


@pytest.mark.parametrize("layout", ["official", "peft"])
@pytest.mark.parametrize("scheme", ["w8a16-int8", "w8a16-fp8", "fp8-scaled", "w8a8-int8", "w8a8-fp8"])
def test_dynamic_lora_on_quant_linear(tmp_path, scheme, layout):
    model = apply_quant(randomize_(WanModel(CFG), seed=3).eval(), scheme)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert set(TARGETS) <= set(layers)
    assert all(tuple(layers[n].weight.shape) == shape for n, (_, shape) in TARGETS.items())
    before = {n: (m.weight.detach().clone(), m.weight_scale.detach().clone(), m.weight.data_ptr())
              for n, m in layers.items()}
    base = _out(model)
    pairs = _write_lora(tmp_path / f"lora_{layout}.safetensors", layout)
    lora = load_lora(tmp_path / f"lora_{layout}.safetensors", model)
    assert lora.targets == {f"{n}.weight" for n in TARGETS} and not lora.unmatched

    strength = 0.7
    lora_set = apply_dynamic_lora(model, [(lora, strength)])
    out = _out(model)
    want = _out(_float_reference(model, pairs, strength))
    # weight-only, fp32 throughout; the hook adds (x @ down^T) @ (c * up)^T where the reference
    # multiplies by the merged weight: only summation order differs (measured 3e-7 of max|out|).
    # w8a8 also quantizes each layer's input per token (the LoRA path stays float): within its error
    w8a8 = scheme.startswith("w8a8")
    tol = (5e-2 if w8a8 else 2e-6) * want.abs().max().item()
    torch.testing.assert_close(out, want, rtol=0, atol=tol)
    assert (out - base).abs().max() > 0.05 * base.abs().max()  # the LoRA does change the output
    # another strength on the same set: the delta scales with it (not cached from the first one)
    lora_set.set([(lora, -0.4)])
    want_neg = _out(_float_reference(model, pairs, -0.4))
    torch.testing.assert_close(_out(model), want_neg, rtol=0, atol=(5e-2 if w8a8 else 2e-6) * want_neg.abs().max().item())

    lora_set.reset()
    assert torch.equal(_out(model), base)  # the exact base output, bit for bit
    for n, m in layers.items():  # the quantized weights were never rewritten (nor requantized)
        w, s, ptr = before[n]
        assert m.weight.dtype == w.dtype and torch.equal(m.weight.view(torch.uint8), w.view(torch.uint8)), n
        assert torch.equal(m.weight_scale, s) and m.weight.data_ptr() == ptr, n
