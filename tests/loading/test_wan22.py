"""Wan2.2 (T2V-A14B, I2V-A14B, TI2V-5B): detection of both layouts, refusals by name, loading both
experts, the user's expert files, the distilled presets. On the tiny checkpoints of
tests/wan22_fixtures.py (diffusers' own save, and the same weights in the official layout)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from lightx2v.errors import CheckpointError, InputError, LightX2VError
from lightx2v.loading.detect import detect
from lightx2v.models.registry import get_family
from lightx2v.models.wan.vae import WanVAEConfig
from lightx2v.models.wan.vae22 import Wan22VAEConfig

DIRS = {"t2v": "wan22_t2v_dirs", "i2v": "wan22_i2v_dirs", "ti2v": "wan22_ti2v_dirs"}


@pytest.fixture
def dirs(request):
    """(diffusers_dir, official_dir) of the parametrized kind."""
    return request.getfixturevalue(DIRS[request.param])


def _copy(src, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    for k in [k for k, v in changes.items() if v is ...]:
        del data[k]
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- detection


# kind -> (boundary, official (steps, guidance high, low, shift, fps), diffusers shift, in_dim, vae kind, z)
EXPECTED = {
    "t2v": (0.875, (40, 4.0, 3.0, 12.0, 16), 3.0, 16, WanVAEConfig, 16),
    "i2v": (0.9, (40, 3.5, 3.5, 5.0, 16), 3.0, 36, WanVAEConfig, 16),
    "ti2v": (None, (50, 5.0, None, 5.0, 24), 5.0, 48, Wan22VAEConfig, 48),
}


@pytest.mark.parametrize("dirs", list(DIRS), indirect=True, ids=list(DIRS))
def test_detect_both_layouts(dirs):
    diffusers_dir, official_dir = dirs
    a, b = detect(official_dir), detect(diffusers_dir)
    kind = a.task
    boundary, (steps, g_high, g_low, shift, fps), diffusers_shift, in_dim, vae_cls, z = EXPECTED[kind]
    assert (a.family, a.layout, b.family, b.task, b.layout) == ("wan2.2", "official", "wan2.2", kind, "diffusers")
    for mc in (a, b):
        assert mc.arch.boundary == boundary and mc.arch.switch_step is None
        assert mc.dit.model_type == kind and mc.dit.in_dim == in_dim and not mc.dit.has_image_branch
        assert isinstance(mc.arch.vae, vae_cls) and mc.arch.vae.z_dim == z
        assert "clip" not in mc.files and {c.name for c in mc.spec.components} == {"text_encoder", "vae", "tiny_vae"}  # tiny_vae: loaded only when a file is given
        d = mc.defaults
        assert (d.num_inference_steps, d.guidance_scale, d.guidance_scale_2, d.fps) == (steps, g_high, g_low, fps)
        assert d.negative_prompt.startswith("色调艳丽") and d.solver == "unipc"
        if kind == "ti2v":
            assert mc.arch.dit_2 is None and mc.dit_names == ("dit",) and "dit_2" not in mc.files
        else:
            assert mc.arch.dit_2 == mc.dit and mc.dit_names == ("dit", "dit_2")
    assert (a.defaults.shift, a.defaults.convention) == (shift, "official")
    assert (b.defaults.shift, b.defaults.convention) == (diffusers_shift, "diffusers")  # its scheduler config
    assert a.dit == b.dit and a.arch.dit_2 == b.arch.dit_2 and a.arch.text_encoder == b.arch.text_encoder
    assert a.arch.vae == b.arch.vae
    if kind != "ti2v":  # the real file names, shard counts read from the indexes
        assert [p.rsplit("/", 2)[-2:] for p in a.files["dit"]] == [
            ["high_noise_model", f"diffusion_pytorch_model-0000{i}-of-00003.safetensors"] for i in (1, 2, 3)]
        assert all("/low_noise_model/" in p for p in a.files["dit_2"]) and len(a.files["dit_2"]) == 2
        assert all("/transformer_2/" in p for p in b.files["dit_2"]) and a.files["vae"].endswith("Wan2.1_VAE.pth")
    else:
        assert a.files["vae"].endswith("Wan2.2_VAE.pth")


@pytest.mark.parametrize("dirs", list(DIRS), indirect=True, ids=list(DIRS))
def test_only_wan22_recognises_wan22_folders(dirs):
    for folder in dirs:
        reason = get_family("wan2.1").recognise(folder)
        assert not isinstance(reason, str) and "Wan2.1 does not use" in reason.text
        assert get_family("wan2.2").recognise(folder) in ("official", "diffusers")


def test_wan21_folders_stay_wan21(tiny_official_dir, tiny_diffusers_dir):
    wan22 = get_family("wan2.2")
    assert "a Wan2.1 folder" in wan22.recognise(tiny_official_dir).text
    assert "one-transformer Wan2.1 pipeline" in wan22.recognise(tiny_diffusers_dir).text
    assert detect(tiny_official_dir).family == detect(tiny_diffusers_dir).family == "wan2.1"


def test_geometry(wan22_t2v_dirs, wan22_ti2v_dirs):
    a14b, ti2v = detect(wan22_t2v_dirs[1]), detect(wan22_ti2v_dirs[0])
    g = a14b.spec.geometry(a14b)
    assert (g.size_multiple, g.frame_step, g.latent_channels, g.stride) == (16, 4, 16, (4, 8, 8))
    g = ti2v.spec.geometry(ti2v)
    assert (g.size_multiple, g.frame_step, g.latent_channels, g.stride) == (32, 4, 48, (4, 16, 16))
    assert g.latent_shape(121, 704, 1280) == (1, 48, 31, 44, 80)
    g.check(704, 1280, 121)
    with pytest.raises(InputError, match=r"height must be a positive multiple of 32 \(VAE stride 16 x patch 2; .*got 720"):
        g.check(720, 1280, 121)
    with pytest.raises(InputError, match="num_frames must be 4k\\+1"):
        g.check(704, 1280, 120)


def test_the_expert_switch_matches_the_official_split(wan22_t2v_dirs, wan22_i2v_dirs):
    from lightx2v.schedulers import make_scheduler

    for dirs, high in ((wan22_t2v_dirs, 26), (wan22_i2v_dirs, 15)):  # official T2V 26 + 14, I2V 15 + 25 steps
        mc = detect(dirs[1])
        sched = make_scheduler("unipc", convention="official")
        sched.set_timesteps(mc.defaults.num_inference_steps, shift=mc.defaults.shift)
        experts = [mc.arch.expert_at(i, t) for i, t in enumerate(sched.timesteps.tolist())]
        assert experts == ["high"] * high + ["low"] * (40 - high)
    assert mc.arch.expert_at(0, 900.0) == "high" and mc.arch.expert_at(1, 899.0) == "low"  # t >= 900 inclusive


# ---------------------------------------------------------------- refusals, by name


def _diffusers_copy(dirs, tmp_path, **index):
    dst = _copy(dirs[0], tmp_path)
    _edit_json(dst / "model_index.json", **index)
    return dst


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1, "0.9", True])
def test_boundary_ratio_outside_0_1_is_refused(wan22_t2v_dirs, tmp_path, ratio):
    dst = _diffusers_copy(wan22_t2v_dirs, tmp_path, boundary_ratio=ratio)
    with pytest.raises(CheckpointError, match=r"boundary_ratio .* must be a number between 0 and 1 \(exclusive\)"):
        detect(dst)


@pytest.mark.parametrize("index, match", [
    ({"boundary_ratio": None}, "sets transformer_2 without boundary_ratio: nothing says at which timestep"),
    ({"transformer_2": [None, None]}, "sets boundary_ratio 0.875 without transformer_2"),
    ({"expand_timesteps": True}, r"sets expand_timesteps true \(TI2V-5B, one DiT\) and transformer_2"),
    ({"expand_timesteps": "yes"}, "expand_timesteps must be true or false"),
    ({"image_encoder": ["transformers", "CLIPVisionModel"]}, "sets image_encoder=.*Wan2.2 uses no image encoder"),
    ({"feature_extractor": ["transformers", "X"]}, r"unknown entry feature_extractor=\[\"transformers\", \"X\"\]"),
    ({"transformer": [None, None]}, "sets no transformer"),
    ({"_class_name": "WanImageToVideoPipeline"}, r"is a t2v DiT \(16 -> 16 channels\); a Wan2.2 i2v checkpoint needs model_type i2v"),
])
def test_contradicting_model_index_entries_are_refused(wan22_t2v_dirs, tmp_path, index, match):
    with pytest.raises(CheckpointError, match=match):
        detect(_diffusers_copy(wan22_t2v_dirs, tmp_path, **index))


def test_experts_of_different_shapes_are_refused(wan22_t2v_dirs, wan22_i2v_dirs, tmp_path):
    dst = _copy(wan22_t2v_dirs[0], tmp_path, "d")
    _edit_json(dst / "transformer_2" / "config.json", num_layers=3)
    with pytest.raises(CheckpointError, match=r"the two experts differ: transformer/ \(high noise\) vs transformer_2/ "
                                              r"\(low noise\): num_layers 2 vs 3"):
        detect(dst)
    dst = _copy(wan22_t2v_dirs[1], tmp_path, "o")
    shutil.rmtree(dst / "low_noise_model")
    shutil.copytree(wan22_i2v_dirs[1] / "low_noise_model", dst / "low_noise_model")
    with pytest.raises(CheckpointError, match="the two experts differ: high_noise_model/ .* model_type 't2v' vs 'i2v'"):
        detect(dst)


def test_official_folder_refusals(wan22_t2v_dirs, wan22_ti2v_dirs, tmp_path):
    dst = _copy(wan22_t2v_dirs[1], tmp_path, "no-low")
    shutil.rmtree(dst / "low_noise_model")
    with pytest.raises(CheckpointError, match="low_noise_model/ not found in .*holds both high_noise_model/"):
        detect(dst)
    dst = _copy(wan22_t2v_dirs[1], tmp_path, "two-vaes")
    shutil.copy(wan22_ti2v_dirs[1] / "Wan2.2_VAE.pth", dst)
    with pytest.raises(CheckpointError, match="holds Wan2.2_VAE.pth, which Wan2.2 A14B .* uses Wan2.1_VAE.pth"):
        detect(dst)
    dst = _copy(wan22_ti2v_dirs[1], tmp_path, "ti2v-as-t2v")
    _edit_json(dst / "config.json", model_type="t2v")
    with pytest.raises(CheckpointError, match="is a t2v DiT .*a Wan2.2 ti2v checkpoint needs model_type ti2v"):
        detect(dst)
    dst = _copy(wan22_ti2v_dirs[1], tmp_path, "ti2v-no-vae")
    (dst / "Wan2.2_VAE.pth").unlink()
    with pytest.raises(CheckpointError, match="VAE not found: expected .*Wan2.2_VAE.pth in the Wan2.2 official layout"):
        detect(dst)  # model_type ti2v: Wan2.2's (Wan2.1 refuses it by name)
    assert "model_type ti2v" in get_family("wan2.1").recognise(dst).text
    dst = _copy(wan22_t2v_dirs[1], tmp_path, "bad-expert")
    _edit_json(dst / "high_noise_model" / "config.json", window_size=[8, 8])
    with pytest.raises(CheckpointError, match="high_noise_model: official Wan config.json: window_size"):
        detect(dst)


def test_the_wrong_vae_is_refused(wan22_t2v_dirs, tmp_path):
    dst = _copy(wan22_t2v_dirs[0], tmp_path)
    _edit_json(dst / "vae" / "config.json", is_residual=True)
    with pytest.raises(CheckpointError, match=r"is_residual true; Wan2.2 A14B uses the Wan2.1 VAE \(is_residual false"):
        detect(dst)


# ---------------------------------------------------------------- loading


def _diffusers_dit(folder):
    from diffusers import WanTransformer3DModel

    from lightx2v.loading.state_dict import rename
    from lightx2v.models.wan.dit import dit_key_from_diffusers

    return rename(WanTransformer3DModel.from_pretrained(folder).state_dict(), dit_key_from_diffusers)


KEYS = ("patch_embedding.weight", "blocks.1.self_attn.q.weight", "blocks.0.cross_attn.norm_k.weight",
        "head.head.weight", "time_projection.1.bias")


@pytest.mark.parametrize("dirs", ["t2v", "ti2v"], indirect=True)
def test_both_experts_load_the_diffusers_weights(dirs):
    from lightx2v.loading.components import load_component, load_dit

    diffusers_dir, official_dir = dirs
    folders = {"dit": diffusers_dir / "transformer", "dit_2": diffusers_dir / "transformer_2"}
    for root in dirs:
        mc = detect(root)
        for name in mc.dit_names:
            ref = _diffusers_dit(folders[name])
            ours = load_dit(mc, torch.device("cpu"), torch.float32, name=name).state_dict()
            assert ours.keys() == ref.keys()
            for k in KEYS:
                assert torch.equal(ours[k], ref[k]), (root.name, name, k)
        vae = load_component(mc, "vae", torch.device("cpu"), torch.bfloat16)
        assert type(vae).__name__ == ("Wan22VAE" if mc.task == "ti2v" else "WanVAE")
        assert vae.conv2.weight.dtype == torch.float32  # the VAE runs fp32
        assert load_component(mc, "text_encoder", torch.device("cpu"), torch.float32) is not None
    if "dit_2" in mc.dit_names:  # two different experts, not one loaded twice
        assert not torch.equal(_diffusers_dit(folders["dit"])[KEYS[0]], _diffusers_dit(folders["dit_2"])[KEYS[0]])


def test_no_second_dit_for_ti2v(wan22_ti2v_dirs):
    from lightx2v.loading.components import load_dit

    mc = detect(wan22_ti2v_dirs[1])
    with pytest.raises(CheckpointError, match="this Wan2.2 ti2v checkpoint has no DiT 'dit_2'"):
        load_dit(mc, torch.device("cpu"), torch.float32, name="dit_2")


# ---------------------------------------------------------------- the user's expert files (--dit-path, --dit-path-2)


def _single_file(folder, dst):
    from safetensors.torch import load_file, save_file

    sd = {}
    for shard in sorted(folder.glob("*.safetensors")):
        sd.update(load_file(shard))
    save_file(sd, str(dst))
    return dst


def test_dit_path_2_replaces_the_low_noise_expert(wan22_t2v_dirs, tmp_path):
    from lightx2v.loading.components import load_dit

    diffusers_dir, official_dir = wan22_t2v_dirs
    # the high expert's weights given as the low one: a visible swap
    high = _single_file(official_dir / "high_noise_model", tmp_path / "my_expert.safetensors")
    low = _single_file(diffusers_dir / "transformer_2", tmp_path / "low_diffusers_keys.safetensors")
    mc = detect(official_dir, dit_path=low, dit_path_2=high)
    assert mc.files["dit"] == (str(low),) and mc.files["dit_2"] == (str(high),)
    assert mc.dit_source.key_format == "diffusers" and mc.dit_source_2.key_format == "official"
    d1 = load_dit(mc, torch.device("cpu"), torch.float32, name="dit").state_dict()
    d2 = load_dit(mc, torch.device("cpu"), torch.float32, name="dit_2").state_dict()
    assert torch.equal(d1[KEYS[0]], _diffusers_dit(diffusers_dir / "transformer_2")[KEYS[0]])
    assert torch.equal(d2[KEYS[0]], _diffusers_dit(diffusers_dir / "transformer")[KEYS[0]])
    only_low = detect(diffusers_dir, dit_path_2=high)
    assert only_low.dit_source is None and "/transformer/" in only_low.files["dit"][0]


def test_dit_path_refusals(wan22_t2v_dirs, wan22_i2v_dirs, wan22_ti2v_dirs, tiny_official_dir, tmp_path):
    t2v = wan22_t2v_dirs[1]
    swapped = _single_file(t2v / "low_noise_model", tmp_path / "wan2.2_t2v_A14b_low_noise_lightx2v_4step.safetensors")
    with pytest.raises(InputError, match="--dit-path takes the high-noise expert, but .*low_noise.* is named as the "
                                         "low-noise one; swap --dit-path and --dit-path-2"):
        detect(t2v, dit_path=swapped)
    with pytest.raises(InputError, match="--dit-path-2 .*replaces a second DiT .*is a Wan2.2 ti2v model with one DiT"):
        detect(wan22_ti2v_dirs[1], dit_path_2=swapped)
    with pytest.raises(InputError, match="is a Wan2.1 t2v model with one DiT"):
        detect(tiny_official_dir, dit_path_2=swapped)
    i2v = _single_file(wan22_i2v_dirs[1] / "low_noise_model", tmp_path / "i2v_low.safetensors")
    with pytest.raises(CheckpointError, match=r"i2v_low.safetensors \(--dit-path-2, the low-noise expert\) is a Wan2.2 "
                                              r"i2v DiT .*the folder's config is a Wan2.1 t2v DiT"):
        detect(t2v, dit_path_2=i2v)


# ---------------------------------------------------------------- step-distilled presets


def _assert_distilled(mc, preset, switch_step=2):
    d = mc.defaults
    assert (d.solver, d.num_inference_steps, d.shift, d.guidance_scale, d.guidance_scale_2) == ("distill", 4, 5.0, 1.0, 1.0)
    assert tuple(d.solver_options["denoising_steps"]) == (1000, 750, 500, 250)
    assert mc.arch.switch_step == switch_step and mc.distill.preset.name == preset
    assert [mc.arch.expert_at(i, t) for i, t in enumerate((1000, 937.5, 833.3, 625))] == ["high"] * 2 + ["low"] * 2


def test_distill_preset_by_name(wan22_t2v_dirs, wan22_i2v_dirs, wan22_ti2v_dirs):
    mc = detect(wan22_t2v_dirs[0], preset="wan2.2-t2v-a14b-distill")
    _assert_distilled(mc, "wan2.2-t2v-a14b-distill")
    assert mc.arch.boundary == 0.875 and mc.distill.evidence == "preset 'wan2.2-t2v-a14b-distill'"
    _assert_distilled(detect(wan22_i2v_dirs[1], preset="wan2.2-i2v-a14b-720p-distill"), "wan2.2-i2v-a14b-720p-distill")
    with pytest.raises(LightX2VError, match="preset 'wan2.2-i2v-a14b-distill' is a Wan2.2 i2v model, but this checkpoint is t2v"):
        detect(wan22_t2v_dirs[1], preset="wan2.2-i2v-a14b-distill")
    with pytest.raises(LightX2VError, match="is a Wan2.2 t2v model, but this checkpoint is ti2v"):
        detect(wan22_ti2v_dirs[1], preset="wan2.2-t2v-a14b-distill")
    with pytest.raises(LightX2VError, match="unknown preset 'wan2.1-t2v-14b-distill' for Wan2.2"):
        detect(wan22_t2v_dirs[1], preset="wan2.1-t2v-14b-distill")
    assert detect(wan22_t2v_dirs[1]).distill is None


def test_distill_from_lightx2v_file_names(wan22_i2v_dirs, tmp_path):
    official = wan22_i2v_dirs[1]
    high = _single_file(official / "high_noise_model", tmp_path / "wan2.2_i2v_A14b_high_noise_lightx2v_4step_720p_260412.safetensors")
    low = _single_file(official / "low_noise_model", tmp_path / "wan2.2_i2v_A14b_low_noise_lightx2v_4step_720p_260412.safetensors")
    with pytest.warns(UserWarning, match="assuming wan2.2-i2v-a14b-720p-distill from the name .*4 steps "
                                         r"\(1000, 750, 500, 250\), shift 5, no CFG"):
        mc = detect(official, dit_path=high, dit_path_2=low)
    _assert_distilled(mc, "wan2.2-i2v-a14b-720p-distill")
    with pytest.warns(UserWarning) as record:
        detect(official, dit_path=high)
    assert [str(w.message).split(":")[0] for w in record] == [
        "assuming wan2.2-i2v-a14b-720p-distill from the name 'wan2.2_i2v_A14b_high_noise_lightx2v_4step_720p_260412.safetensors'",
        "only the high-noise expert was given as a distilled file; the low-noise expert is the folder's, not distilled"]
    # a Wan2.2-Lightning LoRA: the release is in its folder's name
    lora = tmp_path / "Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1" / "high_noise_model.safetensors"
    with pytest.warns(UserWarning, match="assuming wan2.2-i2v-a14b-distill from the name 'Wan2.2-I2V-A14B-4steps"):
        _assert_distilled(detect(official, hints=(str(lora),)), "wan2.2-i2v-a14b-distill")
    assert detect(official, hints=("wan2.2_t2v_A14b_high_noise_lightx2v_4step.safetensors",)).distill is None  # t2v


def test_distill_from_lightx2v_layout_and_config(wan22_t2v_dirs, tmp_path):
    dst = _copy(wan22_t2v_dirs[1], tmp_path)
    for expert in ("high", "low"):
        folder = dst / "distill_models" / f"{expert}_noise_model"
        folder.mkdir(parents=True)
        _single_file(dst / f"{expert}_noise_model", folder / "distill_model.safetensors")
    mc = detect(dst)
    _assert_distilled(mc, "wan2.2-t2v-a14b-distill")
    assert mc.distill.evidence == "LightX2V layout: distill_models/high_noise_model/distill_model.safetensors"
    assert mc.files["dit"] == (str(dst / "distill_models/high_noise_model/distill_model.safetensors"),)
    assert mc.files["dit_2"] == (str(dst / "distill_models/low_noise_model/distill_model.safetensors"),)
    # LightX2V's config: its steps, shift, [high, low] guidance with enable_cfg, boundary_step_index
    (dst / "config.json").write_text(json.dumps({
        "infer_steps": 3, "denoising_step_list": [1000, 700, 400], "sample_shift": 4.0, "enable_cfg": True,
        "sample_guide_scale": [4.0, 3.0], "boundary_step_index": 1}))
    mc = detect(dst)
    d = mc.defaults
    assert (d.num_inference_steps, d.shift, d.guidance_scale, d.guidance_scale_2, mc.arch.switch_step) == (3, 4.0, 4.0, 3.0, 1)
    assert tuple(d.solver_options["denoising_steps"]) == (1000, 700, 400)
    (dst / "config.json").write_text(json.dumps({"denoising_step_list": [1000, 500], "boundary_step_index": 2}))
    with pytest.raises(LightX2VError, match="boundary_step_index must be an integer from 1 to 1"):
        detect(dst)


def test_wan21_name_hints_skip_wan22_names(tiny_official_dir):
    assert detect(tiny_official_dir, hints=("wan2.2_t2v_A14b_high_noise_lightx2v_4step.safetensors",)).distill is None


def test_arch_refuses_what_does_not_fit(wan22_t2v_dirs):
    mc = detect(wan22_t2v_dirs[1])
    with pytest.raises(CheckpointError, match="needs a boundary"):
        dataclasses.replace(mc.arch, boundary=None)
    with pytest.raises(CheckpointError, match="between 0 and 1"):
        dataclasses.replace(mc.arch, boundary=1.0)
    with pytest.raises(CheckpointError, match="one DiT has no expert boundary"):
        dataclasses.replace(mc.arch, dit_2=None)


def test_a_two_expert_folder_as_one_dit_source_asks_which(wan22_t2v_dirs):
    from lightx2v.loading.dit_files import inspect_dit_source

    diffusers_dir, official_dir = wan22_t2v_dirs
    with pytest.raises(CheckpointError, match="holds two DiTs, transformer/ and transformer_2/; pass the one you mean"):
        inspect_dit_source(diffusers_dir)  # (convert, info, --dit-path): never the high expert silently
    with pytest.raises(CheckpointError, match="its sub-folders high_noise_model/, low_noise_model/ hold DiTs"):
        inspect_dit_source(official_dir)
    assert inspect_dit_source(official_dir / "low_noise_model").files[0].name.endswith("00001-of-00002.safetensors")


def test_from_pretrained_passes_dit_path_2(wan22_t2v_dirs, tmp_path, monkeypatch):
    from lightx2v import LightX2V

    low = _single_file(wan22_t2v_dirs[1] / "low_noise_model", tmp_path / "low.safetensors")
    monkeypatch.setattr(LightX2V, "from_model_config", classmethod(lambda cls, mc, engine, **kw: mc))  # detection only
    mc = LightX2V.from_pretrained(wan22_t2v_dirs[1], device="cpu", dit_path_2=low, progress=False)
    assert mc.files["dit_2"] == (str(low),) and mc.dit_source_2.path == low and mc.dit_source is None
