"""CLIP image encoder of Wan2.1 I2V against transformers' CLIPVisionModel / CLIPImageProcessor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightx2v.errors import CheckpointError, InputError
from lightx2v.loading.state_dict import load_into, read_tensors, rename
from lightx2v.models.wan.clip import (
    CLIPVisionConfig,
    WanCLIPVision,
    clip_key_from_official,
    clip_state_dict_from_transformers,
    preprocess_diffusers,
    preprocess_official,
)
from lightx2v.models.wan.tiny import randomize_
from lightx2v.ops.attention import get_backend, set_attention_backend

transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

OFFICIAL_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
# image_encoder/ of Wan-AI/Wan2.1-I2V-14B-480P-Diffusers, shrunk
TINY = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, image_size=56,
            patch_size=14, layer_norm_eps=1e-5)
# image_processor/preprocessor_config.json of the Wan diffusers I2V checkpoints
WAN_PROCESSOR = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224},
}


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= 1e-4 * ref.abs().max().item(), f"max abs error {err}"


def _tiny_cfg(act: str) -> CLIPVisionConfig:
    return CLIPVisionConfig(image_size=56, patch_size=14, dim=64, ffn_dim=256, num_heads=4, num_layers=4, activation=act)


def _ours(cfg: CLIPVisionConfig, sd: dict[str, torch.Tensor], dtype=torch.float32) -> WanCLIPVision:
    with torch.device("meta"):
        model = WanCLIPVision(cfg)
    return load_into(model, sd, dtype=dtype, keep_fp32=WanCLIPVision._keep_in_fp32, what="clip").eval()


@pytest.fixture(scope="module", params=["gelu", "quick_gelu"])
def hf_dir(request, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers CLIPVisionModel saved as the diffusers `image_encoder/` folder."""
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY, hidden_act=request.param))
    randomize_(model, seed=3)
    folder = tmp_path_factory.mktemp("wan-i2v-diffusers") / "image_encoder"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_model(hf_dir: Path):
    return transformers.CLIPVisionModel.from_pretrained(hf_dir).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference(hf_model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = hf_model(pixel_values=pixels, output_hidden_states=True)
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1  # embeddings (after pre_layrnorm) + each layer
    return out.hidden_states[-2]  # what diffusers' WanImageToVideoPipeline.encode_image returns


def _diffusers_sd(hf_dir: Path) -> dict[str, torch.Tensor]:
    return clip_state_dict_from_transformers(read_tensors(hf_dir / "model.safetensors"))


def test_config_from_transformers(hf_dir: Path) -> None:
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert CLIPVisionConfig.from_transformers(cfg) == _tiny_cfg(cfg["hidden_act"])
    assert CLIPVisionConfig.from_transformers({"vision_config": cfg}) == _tiny_cfg(cfg["hidden_act"])
    no_act = {k: v for k, v in cfg.items() if k != "hidden_act"}
    assert CLIPVisionConfig.from_transformers(no_act).activation == "quick_gelu"  # transformers' default
    with pytest.raises(CheckpointError, match="hidden_act|activation"):
        CLIPVisionConfig.from_transformers({**cfg, "hidden_act": "relu"})
    with pytest.raises(CheckpointError, match="intermediate_size"):
        CLIPVisionConfig.from_transformers({k: v for k, v in cfg.items() if k != "intermediate_size"})


def test_matches_transformers_penultimate(hf_dir: Path, pixels: torch.Tensor, reference: torch.Tensor) -> None:
    cfg = CLIPVisionConfig.from_transformers(json.loads((hf_dir / "config.json").read_text()))
    model = _ours(cfg, _diffusers_sd(hf_dir))
    with torch.no_grad():
        out = model(pixels)
    assert out.shape == (2, cfg.num_tokens, cfg.dim) == (2, 17, 64)
    _close(out, reference)
    # the attention dispatch point is used: the fp32 oracle backend gives the same tokens
    set_attention_backend(model, get_backend("reference"))
    with torch.no_grad():
        _close(model(pixels), reference)


def test_transformers4_prefixed_keys(hf_dir: Path, pixels: torch.Tensor, reference: torch.Tensor) -> None:
    """Checkpoints saved by transformers 4 (the Wan diffusers releases) prefix `vision_model.`
    and carry the `position_ids` buffer."""
    raw = read_tensors(hf_dir / "model.safetensors")
    old = {f"vision_model.{k}": v for k, v in raw.items()}
    old["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    sd = clip_state_dict_from_transformers(old)
    assert sd.keys() == _diffusers_sd(hf_dir).keys()
    assert "transformer.3.attn.to_qkv.weight" in sd and sd["transformer.3.attn.to_qkv.weight"].shape == (192, 64)
    cfg = CLIPVisionConfig.from_transformers(json.loads((hf_dir / "config.json").read_text()))
    with torch.no_grad():
        _close(_ours(cfg, sd)(pixels), reference)


def _write_official(folder: Path, sd: dict[str, torch.Tensor]) -> Path:
    """The whole-CLIP state dict of the official file: visual.*, head, text tower, log_scale."""
    g = torch.Generator().manual_seed(1)
    full = {f"visual.{k}": v.clone() for k, v in sd.items()}
    full["visual.head"] = torch.randn(64, 32, generator=g)
    full["textual.token_embedding.weight"] = torch.randn(10, 32, generator=g)
    full["textual.blocks.0.attn.q.weight"] = torch.randn(32, 32, generator=g)
    full["textual.head.0.weight"] = torch.randn(48, 32, generator=g)
    full["log_scale"] = torch.tensor(4.6052)
    path = folder / OFFICIAL_FILE
    torch.save(full, path)
    return path


def test_official_round_trip(hf_dir: Path, tmp_path: Path, pixels: torch.Tensor, reference: torch.Tensor) -> None:
    act = json.loads((hf_dir / "config.json").read_text())["hidden_act"]
    path = _write_official(tmp_path, _diffusers_sd(hf_dir))
    sd = rename(read_tensors(path), clip_key_from_official)
    assert not any(k.startswith(("visual.", "textual.")) or k in ("head", "log_scale") for k in sd)
    cfg = CLIPVisionConfig.from_state_dict(sd, num_heads=4)
    assert cfg == _tiny_cfg("gelu")  # the official file has no config: the official activation is assumed
    cfg = CLIPVisionConfig(**{**cfg.__dict__, "activation": act})
    with torch.no_grad():
        _close(_ours(cfg, sd)(pixels), reference)


def test_from_state_dict_full_size() -> None:
    """Sizes and heads of the real ViT-H/14 read off (meta) tensors of the official names."""
    with torch.device("meta"):
        sd = WanCLIPVision(CLIPVisionConfig()).state_dict()
    assert CLIPVisionConfig.from_state_dict(sd) == CLIPVisionConfig()
    assert CLIPVisionConfig().num_tokens == 257
    small = {k: v for k, v in _meta_tiny_sd().items()}
    with pytest.raises(CheckpointError, match="num_heads"):
        CLIPVisionConfig.from_state_dict(small)  # 64 wide: not a multiple of the official head size
    with pytest.raises(CheckpointError, match="patch_embedding.weight"):
        CLIPVisionConfig.from_state_dict({k: v for k, v in small.items() if k != "patch_embedding.weight"})


def _meta_tiny_sd() -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return WanCLIPVision(_tiny_cfg("gelu")).state_dict()


def test_unknown_or_missing_keys_raise(hf_dir: Path) -> None:
    sd = rename(read_tensors(_write_official(hf_dir.parent, _diffusers_sd(hf_dir))), clip_key_from_official)
    cfg = _tiny_cfg("gelu")
    with pytest.raises(CheckpointError, match=r"unexpected keys: visual\.extra"):
        _ours(cfg, {**sd, "visual.extra": torch.zeros(1)})  # an unknown key is kept as it is
    assert clip_key_from_official("visual.extra") == "extra" and clip_key_from_official("other") == "other"
    last = {k: v for k, v in sd.items() if not k.startswith("transformer.3.")}
    with pytest.raises(CheckpointError, match=r"missing keys: transformer\.3\."):
        _ours(cfg, last)  # the last block is not computed, but a file without it is not the official one
    raw = read_tensors(hf_dir / "model.safetensors")
    partial = clip_state_dict_from_transformers({k: v for k, v in raw.items() if k != "encoder.layers.1.self_attn.v_proj.bias"})
    with pytest.raises(CheckpointError, match=r"transformer\.1\.attn\.to_qkv\.bias.*encoder\.layers\.1\.self_attn\.k_proj\.bias"):
        _ours(cfg, partial)
    with pytest.raises(CheckpointError, match="unexpected keys: unknown.weight"):
        _ours(cfg, clip_state_dict_from_transformers({**raw, "unknown.weight": torch.zeros(1)}))


def test_half_precision_runs_in_weight_dtype(hf_dir: Path, pixels: torch.Tensor, reference: torch.Tensor) -> None:
    cfg = CLIPVisionConfig.from_transformers(json.loads((hf_dir / "config.json").read_text()))
    model = _ours(cfg, _diffusers_sd(hf_dir), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        out = model(pixels)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() <= 0.05 * reference.abs().max()
    with pytest.raises(InputError, match=r"expected \[B, 3, 56, 56\]"):
        model(torch.zeros(1, 3, 224, 224))


# ---------------------------------------------------------------- preprocessing


def _random_image(w: int, h: int, mode: str, seed: int):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


@pytest.mark.parametrize(
    "config",
    [
        WAN_PROCESSOR,
        {**WAN_PROCESSOR, "size": 40, "crop_size": 32, "resample": 2},  # legacy int sizes, bilinear
        {**WAN_PROCESSOR, "do_resize": False, "crop_size": {"height": 120, "width": 80}},  # crop pads small images
        {**WAN_PROCESSOR, "size": {"height": 50, "width": 70}, "do_center_crop": False, "do_normalize": False},
    ],
)
def test_preprocess_diffusers_matches_clip_image_processor(config: dict) -> None:
    images = [_random_image(333, 517, "RGB", 0), _random_image(97, 60, "RGB", 1), _random_image(60, 97, "RGBA", 2),
              _random_image(150, 150, "L", 3)]
    processor = transformers.CLIPImageProcessorPil(**config)
    for image in images:  # one at a time: uncropped outputs differ in size
        ref = torch.as_tensor(np.asarray(processor(images=image, return_tensors="np")["pixel_values"]))
        ours = preprocess_diffusers(image, config)
        assert ours.shape == ref.shape and ours.dtype == torch.float32
        assert (ours - ref.float()).abs().max() <= 1e-5, (image.size, image.mode)
    if config.get("do_center_crop", True):
        ref = processor(images=images, return_tensors="np")["pixel_values"]
        assert (preprocess_diffusers(images, config) - torch.as_tensor(ref)).abs().max() <= 1e-5


def test_preprocess_diffusers_errors() -> None:
    with pytest.raises(InputError, match="PIL"):
        preprocess_diffusers([torch.zeros(3, 8, 8)], WAN_PROCESSOR)
    with pytest.raises(CheckpointError, match="longest_edge"):
        preprocess_diffusers(_random_image(30, 20, "RGB", 0), {**WAN_PROCESSOR, "size": {"longest_edge": 224}})


def _bicubic_axis(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix of bicubic interpolation (a = -0.75, half-pixel centres, clamped
    border, no antialias): the definition of torch's bicubic with align_corners=False."""
    def cubic(t: float) -> float:
        a, t = -0.75, abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        base = int(np.floor(src))
        for j in range(base - 1, base + 3):
            m[i, min(max(j, 0), n_in - 1)] += cubic(src - j)
    return m


def test_preprocess_official_against_formula() -> None:
    cfg = CLIPVisionConfig(image_size=56, patch_size=14, dim=64, ffn_dim=256, num_heads=4, num_layers=4)
    g = torch.Generator().manual_seed(0)
    big = torch.rand(1, 3, 90, 130, generator=g) * 2 - 1  # downscale, aspect ratio not kept
    small = torch.rand(3, 30, 20, generator=g) * 2 - 1  # upscale; a single [3, H, W] image
    out = preprocess_official([big, small], cfg)
    assert out.shape == (2, 3, 56, 56) and out.dtype == torch.float32
    mean, std = np.array(cfg.mean)[:, None, None], np.array(cfg.std)[:, None, None]
    for k, img in enumerate((big[0], small)):
        x = img.double().numpy()
        resized = np.einsum("ih,chw,jw->cij", _bicubic_axis(x.shape[1], 56), x, _bicubic_axis(x.shape[2], 56))
        expected = ((resized * 0.5 + 0.5) - mean) / std
        # torch computes the source coordinates in float32 (ulp ~1e-5 at x=130): hence not 1e-6
        assert np.abs(out[k].double().numpy() - expected).max() <= 1e-4 * np.abs(expected).max()
    assert torch.equal(preprocess_official(big, cfg), out[:1])
    assert preprocess_official(torch.zeros(1, 3, 224, 300)).shape == (1, 3, 224, 224)  # the default ViT-H size
    with pytest.raises(InputError, match=r"\[3, H, W\]"):
        preprocess_official(torch.zeros(1, 4, 8, 8))
