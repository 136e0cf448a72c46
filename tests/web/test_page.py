"""The page built in-process (no server, no model load): the sampling preset of a step-distilled
checkpoint selected by default, the LoRA picker with and without --lora-dir, the `lora` text it
sends, and the history row's LoRAs."""

from types import SimpleNamespace

import pytest

pytest.importorskip("gradio")

from lightx2v.server.loras import scan_lora_dir  # noqa: E402
from lightx2v.server.requests import Served  # noqa: E402
from lightx2v.web import app  # noqa: E402
from tests.server.test_loras import NAMES, write_lora_dir  # noqa: E402


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return scan_lora_dir(write_lora_dir(tmp_path_factory.mktemp("page-loras")), dim=64)


def _page(mc, library=None):
    state = SimpleNamespace(served=Served("tiny", mc, 16, loras=library))
    blocks = app.build_blocks(state)
    return {c.elem_id: c for c in blocks.blocks.values() if getattr(c, "elem_id", None)}, blocks


def _choices(dropdown) -> list:
    return [c[1] if isinstance(c, tuple) else c for c in dropdown.choices]


def test_a_distilled_checkpoint_offers_and_selects_its_preset(tiny_model):
    from lightx2v.loading.detect import detect

    page, _ = _page(detect(tiny_model, preset="wan2.1-t2v-14b-distill"))
    label = "4-step distilled: wan2.1-t2v-14b-distill (this checkpoint)"
    assert page["sampling"].value == label and _choices(page["sampling"]) == [label]
    assert page["steps"].value == 4  # the distilled settings are the page's start values

    plain, _ = _page(detect(tiny_model))
    assert plain["sampling"].value == app.SAMPLING_DEFAULT
    assert _choices(plain["sampling"]) == [app.SAMPLING_DEFAULT, app.SAMPLING_DISTILLED]
    assert plain["steps"].value == 50


def test_the_lora_picker_offers_the_files_of_lora_dir(tiny_model, library):
    from lightx2v.loading.detect import detect

    page, blocks = _page(detect(tiny_model), library)
    select = page["lora-select"]
    assert select.interactive is not False and select.multiselect and _choices(select) == NAMES
    sliders = [c for c in blocks.blocks.values() if type(c).__name__ == "Slider"]
    assert [s.label for s in sliders] == [f"strength: {n}" for n in NAMES] and not any(s.visible for s in sliders)
    assert page["lora"].visible is not False  # the text sent is shown

    bare, _ = _page(detect(tiny_model))
    assert bare["lora-select"].interactive is False and "--lora-dir DIR" in bare["lora-select"].info
    assert bare["lora"].visible is False


def test_lora_spec_is_the_chosen_files_with_their_strengths():
    assert app.lora_spec(NAMES, ["style.safetensors", "detail.safetensors"], 0.25, 1.5) == \
        "style.safetensors:1.5,detail.safetensors:0.25"  # in the order chosen
    assert app.lora_spec(NAMES, [], 0.25, 1.5) == "" and app.lora_spec(NAMES, None, 1, 1) == ""


def test_the_history_row_and_the_model_line_show_the_loras(tiny_model, library):
    from lightx2v.loading.detect import detect
    from lightx2v.web.jobs import Update

    job = SimpleNamespace(meta={"size": "16x16", "num_frames": 5, "steps": 1,
                                "loras": [["style.safetensors", 0.8], ["detail.safetensors", 1.0]]})
    state = SimpleNamespace(store=SimpleNamespace(get=lambda _id: job))
    row = app._row(state, "video_x", Update("completed", 100), {"prompt": "p"}, 3, 1.0)
    assert row["loras"] == "style.safetensors × 0.8, detail.safetensors × 1"
    assert app._table([row])[0][app.HISTORY_COLUMNS.index("loras")] == row["loras"]
    served = Served("tiny", detect(tiny_model), 16, loras=library)
    assert "LoRAs per job: 2 file(s) of --lora-dir" in app.model_line(served, None)
