"""`--dit-path` single files for Qwen-Image, written here in the published layouts from the tiny folder's
transformer (tests/qwen_image_fixtures.py), then run through the whole pipeline:

- LightX2V's fp8 DiT files (lightx2v/Qwen-Image-2512-Lightning `qwen_image_2512_fp8_e4m3fn_scaled_*.safetensors`,
  ModelTC/LightX2V tools/convert/converter.py `--model_type qwen_image_dit --quantized`): the diffusers names
  with no prefix; every 2-D weight of a block's `attn`, `img_mlp`, `txt_mlp`, `img_mod`, `txt_mod` as
  float8_e4m3fn [out, in] = w / scale clipped to +-448, plus `<name>.weight_scale` [out, 1] fp32 =
  max(|w| over the row, 1e-5) / 448; embeddings, head and norms float. Loaded into QuantLinear layers holding
  the file's bytes (no float copy), the image equals the folder run quantized on load with the same scheme.
- ComfyUI single files (Comfy-Org's Qwen-Image repackage): the same names under `model.diffusion_model.`,
  bf16 (the image equals the folder run with its DiT rounded to bf16), a plain fp8 cast of the block linears
  (scale 1), and the scaled-fp8 layout (`scale_weight` scalars, `scale_input`, the `scaled_fp8` marker).
What a file is comes from its tensors: every file here is named `model.safetensors`.
"""

from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("diffusers")

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import CheckpointError  # noqa: E402
from lightx2v.loading.dit_files import inspect_dit_source  # noqa: E402
from lightx2v.quant import QuantLinear, get_scheme  # noqa: E402

H, W = 32, 32
PROMPT = "a red cat on a mat"
COMFY = "model.diffusion_model."
# the converter's selection for qwen_image_dit: key part 2 in these, 2-D tensors only
_LX_TARGETS = ("attn", "img_mlp", "txt_mlp", "txt_mod", "img_mod")


@pytest.fixture(scope="module")
def folder(qwen_image_t2i):
    return qwen_image_t2i[0]


@pytest.fixture(scope="module")
def dit_sd(folder):
    files = sorted((folder / "transformer").glob("*.safetensors"))
    assert len(files) == 1
    return load_file(str(files[0]))


@pytest.fixture(scope="module")
def plain(folder):
    """The folder's own float pipeline, shared: a test that runs it with other weights puts them back."""
    return _load(folder)


@contextlib.contextmanager
def _weights(pipe, values):
    """`pipe`'s DiT with its float parameters set to `values` (name -> tensor) for the block."""
    params = dict(pipe.pipeline.dit.named_parameters())
    saved = {k: p.detach().clone() for k, p in params.items()}
    try:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(values[k])
        yield pipe
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])


def _load(folder, **kw):
    return LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, **kw)


def _image(pipe):
    z = torch.randn(1, 4, 1, H // 8, W // 8, generator=torch.Generator().manual_seed(4))
    return pipe.generate(PROMPT, height=H, width=W, num_inference_steps=2, guidance_scale=1.0, latents=z,
                         output_type="np").images


def _lightx2v_fp8(sd):
    """(file state dict, {module: (fp8 weight, scale)}) in LightX2V's format (module docstring)."""
    out, written = {}, {}
    for k, w in sd.items():
        parts = k.split(".")
        if w.ndim == 2 and len(parts) > 2 and parts[2] in _LX_TARGETS:
            scale = w.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / 448.0
            q = (w.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
            out[k], out[k + "_scale"] = q, scale
            written[k[: -len(".weight")]] = (q, scale)
        else:
            out[k] = w
    return out, written


def _bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


def test_lightx2v_fp8_file_loads_quantized_and_matches_the_quantized_folder(folder, dit_sd, plain, tmp_path):
    sd, written = _lightx2v_fp8(dit_sd)
    # 2 blocks x (8 attention + 4 MLP linears + 2 modulations): the modulations are quantized too
    assert len(written) == 2 * 14 and "transformer_blocks.1.img_mod.1" in written
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    src = inspect_dit_source(path)
    assert (src.family, src.key_format, src.prefix, src.quant) == ("qwen-image", "official", "", "w8a8-fp8")
    assert sorted(src.quantized) == sorted(written)

    pipe = _load(folder, dit_path=path)
    dit = pipe.pipeline.dit
    layers = {n: m for n, m in dit.named_modules() if isinstance(m, QuantLinear)}
    assert sorted(layers) == sorted(written)  # img_in, txt_in, the time embedding and the head stay float
    for name, (q, scale) in written.items():
        m = layers[name]
        assert m.weight.dtype == torch.float8_e4m3fn and torch.equal(_bits(m.weight), _bits(q)), name  # no float copy
        assert torch.equal(m.weight_scale, scale), name
    # the folder's float DiT quantized on load with the scheme of the same formula: the same bytes (checked
    # layer by layer, state dicts equal), the same image up to the CPU GEMMs' alignment-dependent summation
    # order (mmap'd file tensors vs fresh ones: measured 2e-7)
    ref = _load(folder, quant="w8a8-fp8")
    own = dit.state_dict()
    assert all(torch.equal(_bits(v), _bits(own[k])) for k, v in ref.pipeline.dit.state_dict().items())
    got = _image(pipe)
    assert np.abs(got - _image(ref)).max() <= 1e-5
    # and not the float image (the file really is quantized)
    assert np.abs(got - _image(plain)).max() > 1e-4


@pytest.mark.parametrize("prefix", [COMFY, ""])
def test_comfyui_bf16_file_matches_the_folder_in_bf16(folder, dit_sd, plain, tmp_path, prefix):
    path = tmp_path / "model.safetensors"
    save_file({prefix + k: v.to(torch.bfloat16) for k, v in dit_sd.items()}, str(path))
    src = inspect_dit_source(path)
    assert (src.key_format, src.prefix, src.quant) == ("comfyui" if prefix else "official", prefix, None)
    pipe = _load(folder, dit_path=path)
    rounded = {k: v.to(torch.bfloat16).float() for k, v in dit_sd.items()}  # the folder's DiT as the file holds it
    own = pipe.pipeline.dit.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in rounded.items())
    with _weights(plain, rounded) as ref:
        want = _image(ref)
    # equal weights; the images differ only by the CPU GEMMs' summation order (mmap'd tensors: ~5e-7)
    assert np.abs(_image(pipe) - want).max() <= 1e-5


def _block_linear(k: str) -> bool:
    return k.endswith(".weight") and re.match(r"transformer_blocks\.\d+\.(attn|img_mlp|txt_mlp|img_mod|txt_mod)\.", k) \
        is not None


def test_comfyui_plain_fp8_cast_loads_with_scale_one(folder, dit_sd, plain, tmp_path):
    fp8 = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 and _block_linear(k) else v.to(torch.bfloat16))
           for k, v in dit_sd.items()}
    path = tmp_path / "model.safetensors"
    save_file({COMFY + k: v for k, v in fp8.items()}, str(path))
    src = inspect_dit_source(path)
    assert (src.key_format, src.quant, len(src.quantized)) == ("comfyui", "fp8-scaled", 28)
    got = _image(_load(folder, dit_path=path))
    with _weights(plain, {k: v.float() for k, v in fp8.items()}) as ref:  # fp8 weights times 1, the rest bf16
        assert np.abs(got - _image(ref)).max() <= 1e-5


# what LightX2V's converter also quantizes for Qwen-Image in its `--comfyui_mode` (its `comfyui_keys`)
_COMFY_KEYS = ("time_text_embed.timestep_embedder.linear_1.weight", "time_text_embed.timestep_embedder.linear_2.weight",
               "img_in.weight", "txt_in.weight", "norm_out.linear.weight", "proj_out.weight")


@pytest.mark.parametrize("outer", [False, True], ids=["blocks", "comfyui_mode"])
def test_comfyui_scaled_fp8_file_matches_its_dequantized_weights(folder, dit_sd, plain, tmp_path, outer):
    """The scaled-fp8 layout: each block linear float8 with a scalar `scale_weight` (and a `scale_input` the
    dequantizing path does not use), the `scaled_fp8` marker; `comfyui_mode`: as LightX2V's converter
    writes it with `--comfyui_mode`, the embeddings, time projection and head quantized too."""
    scheme = get_scheme("fp8-scaled")
    comfy, deq = {}, {}
    for k, v in dit_sd.items():
        if v.ndim == 2 and (_block_linear(k) or (outer and k in _COMFY_KEYS)):
            q, s = scheme.quantize(v)
            m = k[: -len(".weight")]
            comfy[COMFY + k], comfy[COMFY + m + ".scale_weight"] = q, s
            comfy[COMFY + m + ".scale_input"] = torch.ones(())
            deq[k] = scheme.dequantize(q, s)
        else:
            comfy[COMFY + k], deq[k] = v, v
    comfy[COMFY + "scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    path = tmp_path / "model.safetensors"
    save_file(comfy, str(path))
    src = inspect_dit_source(path)
    assert (src.key_format, src.quant, len(src.quantized)) == ("comfyui", "fp8-scaled", 28 + 6 * outer)
    assert COMFY + "scaled_fp8" in src.ignored
    got = _image(_load(folder, dit_path=path))
    with _weights(plain, deq) as ref:
        assert np.abs(got - _image(ref)).max() <= 1e-5


def test_a_dit_file_of_another_model_is_refused_by_name(folder, dit_sd, tmp_path):
    path = tmp_path / "model.safetensors"
    # one block fewer than the folder's: a Qwen-Image DiT, but not this one
    save_file({k: v for k, v in dit_sd.items() if not k.startswith("transformer_blocks.1.")}, str(path))
    with pytest.raises(CheckpointError, match="is a Qwen-Image DiT with num_layers 1; the model folder's has 2"):
        _load(folder, dit_path=path)
