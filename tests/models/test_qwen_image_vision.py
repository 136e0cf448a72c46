"""The edit models' prompt encoding pieces (models/qwen_image/vision.py) against transformers: the 3-D
M-RoPE positions against Qwen2.5-VL's own get_rope_index given mm_token_type_ids (the released
behaviour), and the encoder with its vision tower against Qwen2_5_VLForConditionalGeneration."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

from lightx2v.errors import InputError  # noqa: E402
from lightx2v.models.qwen_image.text import QwenTextEncoder, text_key_with_vision  # noqa: E402
from lightx2v.models.qwen_image.tiny import tiny_text_config  # noqa: E402
from lightx2v.models.qwen_image.vision import EDIT_PLUS_TEMPLATE, EDIT_TEMPLATE, mrope_positions  # noqa: E402

IMG = 266  # the tiny tokenizer's <|image_pad|> (tiny_text_config().image_token_id)


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(tiny_text_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def _sequence(grids):
    """text, then per image a few text tokens and its pad tokens (one per merged 2 x 2 patch), then text."""
    ids = [5, 6, 7]
    for t, h, w in grids:
        ids += [8, 9] + [IMG] * (t * h * w // 4)
    return torch.tensor([ids + [10, 11, 12]])


@pytest.mark.parametrize("grids", [[(1, 4, 6)], [(1, 4, 6), (1, 8, 2)], [(1, 2, 4)]])
def test_positions_are_transformers_get_rope_index(ref, grids):
    ids = _sequence(grids)
    thw = torch.tensor(grids)
    want, _ = ref.model.get_rope_index(ids, mm_token_type_ids=(ids == IMG).int(), image_grid_thw=thw)
    got = mrope_positions(ids, thw, IMG, 2)
    assert torch.equal(got, want)
    assert not torch.equal(got[1], got[2])  # the vision tokens' rows and columns differ: 3-D, not 1-D


def test_positions_refuse_a_mismatch():
    with pytest.raises(InputError, match="image grid"):
        mrope_positions(_sequence([(1, 4, 6)]), torch.tensor([(1, 4, 6), (1, 2, 2)]), IMG, 2)


def test_encoder_with_vision_is_transformers(ref):
    """Our encoder (vision tower loaded by the file's names) = Qwen2.5-VL's last hidden state given the
    pixel values and the 3-D positions."""
    sd = {text_key_with_vision(k): v for k, v in ref.state_dict().items()}
    with torch.device("meta"):
        enc = QwenTextEncoder(ref.config, vision=True)
    enc.load_state_dict({k: v for k, v in sd.items() if k is not None}, assign=True)
    grids = torch.tensor([(1, 4, 6)])
    ids = _sequence(grids.tolist())
    pixels = torch.randn(24, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grids,
                   mm_token_type_ids=(ids == IMG).int(), output_hidden_states=True).hidden_states[-1]
        got = enc(ids, mask, pixels, grids, position_ids=mrope_positions(ids, grids, IMG, 2))
        flat = enc(ids, mask, pixels, grids)  # 1-D positions: another result
    assert (got - want).abs().max() < 1e-5
    assert (flat - want).abs().max() > 1e-4


def test_templates_place_the_images():
    assert EDIT_TEMPLATE.format("p", 1).count("<|image_pad|>") == 1
    plus = EDIT_PLUS_TEMPLATE.format("p", 2)
    assert "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: " in plus and plus.count("<|image_pad|>") == 2
    assert EDIT_TEMPLATE.drop == EDIT_PLUS_TEMPLATE.drop == 64
