"""HunyuanVideo-1.5 DiT files given with --dit-path (LightX2V's Hy1.5-Distill-Models / Hy1.5-Quantized-Models
layouts: one .safetensors with official keys; quantized files with int8 / float8_e4m3fn weights and a
per-channel `weight_scale`), and the 4-step distilled preset (LightX2V's
configs/hunyuan_video_15/hunyuan_video_t2v_480p_distill.json), on the tiny diffusers folder."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import CheckpointError  # noqa: E402
from lightx2v.loading.detect import detect  # noqa: E402
from lightx2v.quant import QuantLinear  # noqa: E402
from tests.hunyuan15_fixtures import write_hunyuan15  # noqa: E402

H = W = 64
F = 5
PROMPT = 'a neon sign reads "OPEN"'
KW = dict(height=H, width=W, num_frames=F, guidance_scale=1.0, output_type="np")
PRESET = "hunyuanvideo-1.5-t2v-480p-distill"
QUANT = r"double_blocks\.\d+\.(img|txt)_(attn_(q|k|v|proj)|mlp\.fc[12]|mod\.linear)\.weight"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_hunyuan15(tmp_path_factory.mktemp("hy15f"))[0]


@pytest.fixture(scope="module")
def want(folder):
    """The folder's own DiT: the frames of one step."""
    return _run(folder)[1]


@pytest.fixture(scope="module")
def official_sd(folder):
    from safetensors.torch import load_file

    from lightx2v.models.hunyuan15.dit_keys import state_dict_from_diffusers

    sd = state_dict_from_diffusers(load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors")))
    return {k: v.contiguous() for k, v in sd.items()}


def _save(sd, path):
    from safetensors.torch import save_file

    save_file(sd, str(path))
    return path


def _noise(seed=3):
    return torch.randn(1, 4, 2, H // 16, W // 16, generator=torch.Generator().manual_seed(seed))


def _run(folder, steps=1, **kw):
    pipe = LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, **kw)
    return pipe, pipe.generate(PROMPT, latents=_noise(), num_inference_steps=steps, **KW).frames


def test_a_distilled_single_file_replaces_the_folders_dit(folder, official_sd, want, tmp_path):
    _, same = _run(folder, dit_path=_save(official_sd, tmp_path / "dit.safetensors"))
    assert np.abs(same - want).max() < 1e-5  # official keys, the same tensors: the same video (fp32 rounding)
    # LightX2V's files may lack the condition projections (its encoders read them from the folder's DiT)
    lean = {k: v for k, v in official_sd.items() if not k.startswith(("byt5_in.", "vision_in."))}
    assert len(lean) < len(official_sd)
    _, filled = _run(folder, dit_path=_save(lean, tmp_path / "lean.safetensors"))
    assert np.abs(filled - want).max() < 1e-5
    other = dict(official_sd)
    other["final_layer.linear.weight"] = other["final_layer.linear.weight"] * 0.5
    _, changed = _run(folder, dit_path=_save(other, tmp_path / "other.safetensors"))
    assert np.abs(changed - want).max() > 1e-3  # the file's tensors are the ones used


def test_a_dit_of_another_size_is_refused(folder, official_sd, tmp_path):
    small = {k: v for k, v in official_sd.items() if not k.startswith("double_blocks.1.")}
    with pytest.raises(CheckpointError, match="num_layers 1"):
        detect(folder, dit_path=_save(small, tmp_path / "small.safetensors"))


def _quantized(sd, scheme):
    """LightX2V's quantized layout, written here from the formulas (not our quantizer)."""
    import re

    out = {}
    for k, v in sd.items():
        if not re.fullmatch(QUANT, k):
            out[k] = v
            continue
        qmax = 127.0 if scheme == "int8" else 448.0
        scale = v.abs().amax(dim=1, keepdim=True).clamp_min(1e-5) / qmax
        q = v / scale
        out[k] = torch.round(q).clamp(-128, 127).to(torch.int8) if scheme == "int8" else q.to(torch.float8_e4m3fn)
        out[k[: -len("weight")] + "weight_scale"] = scale.float()
    return out


@pytest.mark.parametrize("scheme, name", [("int8", "w8a8-int8"), ("fp8", "w8a8-fp8")])
def test_a_quantized_file_loads_into_quantized_layers(folder, official_sd, want, tmp_path, scheme, name):
    from lightx2v.quant import get_scheme

    path = _save(_quantized(official_sd, scheme), tmp_path / f"hy15_480p_t2v_{scheme}.safetensors")
    mc = detect(folder, dit_path=path)
    assert mc.dit_source.quant == name and len(mc.dit_source.quantized) == 2 * 14
    pipe, got = _run(folder, dit_path=path)
    layer = pipe.pipeline.dit.double_blocks[0].img_attn_q
    assert isinstance(layer, QuantLinear) and layer.weight.dtype in (torch.int8, torch.float8_e4m3fn)
    shape = (layer.out_features, layer.in_features)
    floats = [n for n, p in layer.named_parameters() if p.is_floating_point() and p.dtype != layer.weight.dtype
              and tuple(p.shape) == shape]
    assert floats == []  # no float copy of the weight
    # the file's tensors as they are: what our scheme makes of the float weight
    q, scale = get_scheme(name).quantize(official_sd["double_blocks.0.img_attn_q.weight"])
    assert torch.equal(layer.weight.view(torch.uint8), q.view(torch.uint8))
    assert torch.allclose(layer.weight_scale, scale.reshape(-1, 1))
    err = np.abs(got - want).max()
    assert 0 < err < 0.1  # quantized: close to the float DiT, not the same


def test_the_distill_preset_samples_as_lightx2v(folder):
    mc = detect(folder, preset=PRESET)
    d = mc.defaults
    assert (d.num_inference_steps, d.shift, d.guidance_scale, d.solver, d.fps) == (4, 5.0, 1.0, "distill", 16)
    pipe = LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, preset=PRESET)
    seen = []
    real = pipe.pipeline.model_fn
    pipe.pipeline.model_fn = lambda x, t, c, ctx: (seen.append(float(t.flatten()[0])), real(x, t, c, ctx))[1]
    res = pipe.generate(PROMPT, height=H, width=W, num_frames=F, output_type="latent", seed=1)
    # LightX2V's step-distill schedule: the shifted 1000-entry table read at 1000 - (1000, 750, 500, 250)
    table = torch.linspace(1.0, 0.0, 1001)[:-1]
    table = 5.0 * table / (1 + 4.0 * table)
    want = (table * 1000)[torch.tensor([0, 250, 500, 750])]
    assert res.stats["model_calls"] == 4  # no CFG
    assert np.allclose(seen, want.numpy(), rtol=1e-6)


def test_a_4step_file_name_assumes_the_preset(folder, official_sd, tmp_path):
    path = _save(official_sd, tmp_path / "hy1.5_t2v_480p_lightx2v_4step.safetensors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mc = detect(folder, dit_path=path)
    assert mc.defaults.solver == "distill" and mc.defaults.num_inference_steps == 4
    assert any(PRESET in str(w.message) for w in caught)


def test_the_preset_is_refused_for_image_to_video(tmp_path):
    from lightx2v.errors import LightX2VError
    from tests.hunyuan15_fixtures import write_hunyuan15_i2v

    folder = write_hunyuan15_i2v(tmp_path)[0]
    with pytest.raises(LightX2VError, match="is a HunyuanVideo-1.5 t2v model, but this checkpoint is i2v"):
        detect(folder, preset=PRESET)
