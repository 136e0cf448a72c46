"""The family registry: detection through specs, and folders no family takes, refused by name."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from lightx2v.errors import CheckpointError
from lightx2v.loading.detect import detect
from lightx2v.models.registry import all_tasks, families, get_family


def test_wan21_is_registered_with_what_the_generic_layers_read():
    spec = get_family("wan2.1")
    assert spec in families() and set(spec.tasks) <= set(all_tasks())
    assert {c.name for c in spec.components} == {"text_encoder", "vae", "clip", "tiny_vae"}
    assert spec.dit_format.anchor == "patch_embedding.weight"
    with pytest.raises(CheckpointError, match="unknown model family 'sd3'"):
        get_family("sd3")


def test_geometry_of_a_checkpoint(tiny_official_dir):
    mc = detect(tiny_official_dir)
    g = mc.spec.geometry(mc)
    assert (g.size_multiple, g.frame_step, g.latent_channels, g.stride) == (16, 4, 16, (4, 8, 8))
    assert g.latent_shape(81, 480, 832) == (1, 16, 21, 60, 104)


def test_an_unknown_folder_lists_every_family_and_why(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(CheckpointError, match=r"is not a model folder we know \(Wan2.1: config.json is a FluxTransformer2DModel"):
        detect(tmp_path)


def test_a_diffusers_wan22_pipeline_is_refused_by_wan21_and_taken_by_wan22(tiny_diffusers_dir, tmp_path):
    dst = tmp_path / "wan22"
    shutil.copytree(tiny_diffusers_dir, dst)
    index = json.loads((dst / "model_index.json").read_text())
    index.update(transformer_2=["diffusers", "WanTransformer3DModel"], boundary_ratio=0.875)
    (dst / "model_index.json").write_text(json.dumps(index))
    shutil.copytree(dst / "transformer", dst / "transformer_2")
    reason = get_family("wan2.1").recognise(dst)
    assert ('sets boundary_ratio=0.875, transformer_2=["diffusers", "WanTransformer3DModel"], which Wan2.1 '
            "does not use") in reason.text
    mc = detect(dst)  # a Wan2.1 pipeline given a second expert and a boundary is a Wan2.2 T2V-A14B layout
    assert (mc.family, mc.task, mc.arch.boundary) == ("wan2.2", "t2v", 0.875)


def test_an_official_folder_with_experts_is_refused_by_name(tiny_official_dir, tmp_path):
    dst = tmp_path / "a14b"
    shutil.copytree(tiny_official_dir, dst)
    (dst / "high_noise_model").mkdir()
    (dst / "low_noise_model").mkdir()
    reason = get_family("wan2.1").recognise(dst)
    assert re.search("high_noise_model/ \\(a Wan2.2 A14B high-noise expert\\), low_noise_model/ .* which Wan2.1 "
                     "does not use", reason.text)
    with pytest.raises(CheckpointError, match="config.json describes a DiT, but this folder's DiTs are its experts"):
        detect(dst)  # Wan2.2 takes it, and says what contradicts


def test_a_saved_wan21_pipeline_with_empty_entries_loads(tiny_diffusers_dir):
    index = json.loads((tiny_diffusers_dir / "model_index.json").read_text())
    assert detect(tiny_diffusers_dir).layout == "diffusers"
    assert index.get("transformer_2", [None, None]) in ([None, None], None)  # what diffusers writes for Wan2.1
