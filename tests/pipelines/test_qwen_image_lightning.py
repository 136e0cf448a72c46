"""The Qwen-Image Lightning presets (lightx2v.models.qwen_image.lightning): their schedule against diffusers'
FlowMatchEulerDiscreteScheduler configured as the Lightning README says (shift 3 at every size, no terminal
stretch), what choosing one changes (4 / 8 steps, CFG off, the folder's scheduler replaced), the notice
when a LoRA's file name suggests one, and the whole text-to-image pipeline with a Lightning-layout LoRA and
the preset against diffusers' pipeline with that scheduler and the LoRA loaded (tiny folder,
tests/qwen_image_fixtures.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

diffusers = pytest.importorskip("diffusers")
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline  # noqa: E402
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift, retrieve_timesteps  # noqa: E402

from lightx2v import LightX2V  # noqa: E402
from lightx2v.errors import InputError  # noqa: E402
from lightx2v.models.qwen_image.lightning import LIGHTNING_PRESETS, preset_from_name  # noqa: E402
from lightx2v.models.qwen_image.schedule import DynamicShiftEuler  # noqa: E402
from lightx2v.pipelines.qwen_image import pack  # noqa: E402

# ModelTC/Qwen-Image-Lightning generate_with_diffusers.py / the lightx2v/Qwen-Image-Lightning model card
README_SCHEDULER = {
    "base_image_seq_len": 256, "base_shift": math.log(3), "invert_sigmas": False, "max_image_seq_len": 8192,
    "max_shift": math.log(3), "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": None,
    "stochastic_sampling": False, "time_shift_type": "exponential", "use_beta_sigmas": False,
    "use_dynamic_shifting": True, "use_exponential_sigmas": False, "use_karras_sigmas": False,
}
H, W = 32, 32
PROMPT = "a red cat on a mat"


@pytest.mark.parametrize("name", list(LIGHTNING_PRESETS))
@pytest.mark.parametrize("seq_len", [4, 1024, 6889])  # a tiny image, 512x512, 1328x1328
def test_preset_schedule_equals_diffusers_configured_as_the_readme(name, seq_len):
    preset = LIGHTNING_PRESETS[name]
    n = preset.num_inference_steps
    ref = FlowMatchEulerDiscreteScheduler.from_config(README_SCHEDULER)
    c = ref.config  # as QwenImagePipeline computes mu and the sigmas
    mu = calculate_shift(seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    timesteps, _ = retrieve_timesteps(ref, n, "cpu", sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    ours = DynamicShiftEuler(preset.schedule, seq_len)
    ours.set_timesteps(n, shift=None)
    torch.testing.assert_close(ours.timesteps.float(), timesteps.float(), rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.as_tensor(ours.sigmas).float(), ref.sigmas.float(), rtol=0, atol=1e-6)
    # shift 3 at every size: sigma' = 3 s / (1 + 2 s), ending at 0 (no terminal stretch)
    s = np.linspace(1.0, 1 / n, n)
    np.testing.assert_allclose(ref.sigmas[:-1].numpy(), 3 * s / (1 + 2 * s), rtol=1e-6)


def test_manifest_lists_the_presets():
    from lightx2v.models.qwen_image.manifest import MANIFEST
    from lightx2v.models.qwen_image.spec import QWEN_IMAGE

    assert MANIFEST.presets == QWEN_IMAGE.presets == tuple(LIGHTNING_PRESETS)


@pytest.mark.parametrize("name, want", [
    ("Qwen-Image-Lightning-4steps-V1.0.safetensors", "qwen-image-lightning-4step"),
    ("Qwen-Image-Lightning-8steps-V1.1-bf16.safetensors", "qwen-image-lightning-8step"),
    ("/x/Qwen-Image-Edit-2511-Lightning-4steps-V1.0-fp32.safetensors", "qwen-image-lightning-4step"),
    ("qwen_image_2512_fp8_e4m3fn_scaled_8steps_v1.0.safetensors", "qwen-image-lightning-8step"),
    ("qwen_image_edit_2511_fp8_e4m3fn_scaled_lightning_4steps_v1.0.safetensors", "qwen-image-lightning-4step"),
    ("qwen_image_2512_fp8_e4m3fn_scaled.safetensors", None),  # the base model in fp8: no step count
    ("my_style_lora.safetensors", None),
    ("Wan2.1-T2V-14B-4steps-lora.safetensors", None),  # another family's
])
def test_a_file_name_is_a_hint(name, want):
    match = preset_from_name(name)
    assert (match.preset.name if match else None) == want
    if match:
        assert match.notice.startswith(f"assuming {want} from the name") and "--preset" in match.notice


@pytest.fixture(scope="module")
def folder(qwen_image_t2i):
    return qwen_image_t2i[0]


def _load(folder, **kw):
    return LightX2V.from_pretrained(folder, device="cpu", dtype=torch.float32, progress=False, **kw)


def test_choosing_a_preset_sets_steps_guidance_and_the_schedule(folder):
    pipe = _load(folder, preset="qwen-image-lightning-8step")
    mc = pipe.pipeline.model_config
    assert (mc.defaults.num_inference_steps, mc.defaults.guidance_scale) == (8, 1.0)
    assert mc.arch.schedule == LIGHTNING_PRESETS["qwen-image-lightning-8step"].schedule
    assert mc.distill.evidence == "preset 'qwen-image-lightning-8step'"
    res = pipe.generate(PROMPT, height=H, width=W, seed=1, output_type="np")
    assert res.stats["model_calls"] == 8  # 8 steps, one call each: no CFG branch
    with pytest.warns(UserWarning, match="guidance_scale 4 with qwen-image-lightning-8step: .* distilled without CFG"):
        res = pipe.generate(PROMPT, height=H, width=W, seed=1, num_inference_steps=2, guidance_scale=4.0,
                            output_type="np")
    assert res.stats["model_calls"] == 4  # asked for: CFG runs, with the warning
    with pytest.raises(InputError, match="Qwen-Image has no preset 'wan2.1-t2v-14b-distill'"):
        _load(folder, preset="wan2.1-t2v-14b-distill")


def _lora(path, transformer):
    """A tiny random LoRA in the Lightning release's layout (lora_down / lora_up / alpha, the model's names)."""
    g = torch.Generator().manual_seed(3)
    sd = {}
    for name, m in transformer.named_modules():
        if isinstance(m, torch.nn.Linear) and name.startswith("transformer_blocks."):
            sd[f"{name}.lora_down.weight"] = torch.randn(4, m.in_features, generator=g) * 0.3
            sd[f"{name}.lora_up.weight"] = torch.randn(m.out_features, 4, generator=g) * 0.3
            sd[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(sd, str(path))
    return path


def test_pipeline_with_a_lightning_lora_and_its_preset_matches_diffusers(folder, tmp_path):
    """A LoRA named as the 4-step release: the preset is assumed (with the notice), merged and dynamic give
    diffusers' image with the README's scheduler and the same LoRA, 4 steps, true_cfg_scale 1."""
    ref = QwenImagePipeline.from_pretrained(str(folder))
    ref.scheduler = FlowMatchEulerDiscreteScheduler.from_config(README_SCHEDULER)
    path = _lora(tmp_path / "Qwen-Image-Lightning-4steps-V1.0.safetensors", ref.transformer)
    ref.load_lora_weights(str(path))
    z = torch.randn(1, 4, 1, H // 8, W // 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = ref(prompt=PROMPT, negative_prompt=" ", height=H, width=W, latents=pack(z), num_inference_steps=4,
                   true_cfg_scale=1.0, output_type="np").images
    for mode in ("merge", "dynamic"):
        with pytest.warns(UserWarning, match="assuming qwen-image-lightning-4step from the name"):
            ours = _load(folder, lora=[(path, 1.0)], lora_mode=mode)
        res = ours.generate(PROMPT, height=H, width=W, latents=z, output_type="np")
        assert res.stats["model_calls"] == 4
        err = np.abs(res.images - want).max()
        assert err < 1e-3, (mode, err)


def test_cli_preset_with_a_lora(folder, qwen_image_t2i, tmp_path, capsys):
    """`lightx2v generate --preset qwen-image-lightning-4step --lora FILE`: 4 steps, no CFG, recorded in the
    image's metadata with the LoRA."""
    import json

    from lightx2v.cli.main import main

    lora = _lora(tmp_path / "style.safetensors", qwen_image_t2i[1].transformer)  # names only: nothing is changed
    out = tmp_path / "cat.png"
    assert main(["generate", "--model-path", str(folder), "--task", "t2i", "--prompt", PROMPT, "--size", f"{W}x{H}",
                 "--preset", "qwen-image-lightning-4step", "--lora", str(lora), "--device", "cpu", "--dtype", "fp32",
                 "--quiet", "--seed", "7", "--output", str(out)]) == 0
    meta = json.loads((tmp_path / "cat.png.json").read_text())
    assert (meta["preset"], meta["num_inference_steps"], meta["guidance_scale"]) == ("qwen-image-lightning-4step", 4, 1.0)
    assert [(e["path"], e["strength"], e["mode"]) for e in meta["loras"]] == [(str(lora), 1.0, "merged")]
    assert meta["dit_path"] is None


def test_an_edit_checkpoint_takes_the_presets(tmp_path):
    """The Edit / Edit-2511 Lightning LoRAs: the preset sets an edit folder's steps, guidance and schedule
    (its defaults are 40 steps and CFG 4), and the edit pipeline samples from that schedule (it builds its
    scheduler as the text-to-image one, from `mc.arch.schedule`)."""
    from lightx2v.loading.detect import detect
    from lightx2v.pipelines.qwen_image import QwenImagePipeline as Ours
    from lightx2v.pipelines.qwen_image_edit import QwenImageEditPipeline
    from tests.qwen_image_edit_fixtures import write_qwen_image_edit

    folder = write_qwen_image_edit(tmp_path, plus=True)
    assert detect(folder).defaults.num_inference_steps == 40
    with pytest.warns(UserWarning, match="assuming qwen-image-lightning-8step"):
        mc = detect(folder, hints=("Qwen-Image-Edit-2511-Lightning-8steps-V1.0-bf16.safetensors",))
    assert (mc.task, mc.defaults.num_inference_steps, mc.defaults.guidance_scale) == ("edit", 8, 1.0)
    assert mc.arch.schedule == LIGHTNING_PRESETS["qwen-image-lightning-8step"].schedule
    assert QwenImageEditPipeline.make_scheduler is Ours.make_scheduler
