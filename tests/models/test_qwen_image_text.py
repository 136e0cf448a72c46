"""The Qwen-Image text encoder (transformers' Qwen2.5-VL decoder under our loader) and the prompt
encoding against diffusers' QwenImagePipeline.encode_prompt, on one tiny random
Qwen2_5_VLForConditionalGeneration written to disk as the releases ship it, and a tiny Qwen2 tokenizer."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import QwenImagePipeline  # noqa: E402
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

from lightx2v.errors import CheckpointError, InputError  # noqa: E402
from lightx2v.loading.state_dict import load_into, read_tensors, rename  # noqa: E402
from lightx2v.models.qwen_image.text import (  # noqa: E402
    T2I_TEMPLATE, QwenTextEncoder, encode_prompts, load_tokenizer, text_config_from_file, text_key_from_file, trim,
)
from lightx2v.models.qwen_image.tiny import build_tiny_tokenizer, tiny_text_config  # noqa: E402

PROMPTS = ["a red cat on a mat", "a lighthouse at dusk, in the style of an oil painting, with waves"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen_text")
    torch.manual_seed(0)
    ref = Qwen2_5_VLForConditionalGeneration(tiny_text_config()).eval()
    with torch.no_grad():  # larger than the 0.02 init, so the hidden states are far from zero
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    ref.save_pretrained(str(root / "text_encoder"))
    build_tiny_tokenizer(root / "tokenizer")
    return root, ref


@pytest.fixture(scope="module")
def ours(folder):
    root, _ = folder
    cfg = text_config_from_file(root / "text_encoder")
    with torch.device("meta"):
        enc = QwenTextEncoder(cfg)
    sd = rename(read_tensors(root / "text_encoder" / "model.safetensors"), text_key_from_file)
    load_into(enc, sd, dtype=torch.float32, what="text encoder")
    return enc.eval(), load_tokenizer(root / "tokenizer")


def _reference(folder, prompts, max_sequence_length=512):
    root, ref = folder
    pipe = QwenImagePipeline(scheduler=None, vae=None, text_encoder=ref, tokenizer=load_tokenizer(root / "tokenizer"),
                             transformer=None)
    return pipe.encode_prompt(prompts, device=torch.device("cpu"), max_sequence_length=max_sequence_length)


def _close(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= 1e-5 * b.abs().max().item(), err


def test_the_file_is_in_the_released_layout(folder):
    keys = read_tensors(folder[0] / "text_encoder" / "model.safetensors").keys()
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" in keys
    assert any(k.startswith("visual.") for k in keys) and not any(k.startswith("model.language_model.") for k in keys)


def test_one_prompt_matches_encode_prompt(folder, ours):
    want, want_mask = _reference(folder, PROMPTS[0])
    got, mask = encode_prompts(*ours, [PROMPTS[0]])
    assert want_mask is None and bool(mask.all())  # one prompt: no padding
    _close(got, want)


def test_a_batch_pads_and_masks_as_encode_prompt(folder, ours):
    want, want_mask = _reference(folder, PROMPTS)
    got, mask = encode_prompts(*ours, PROMPTS)
    assert torch.equal(mask, want_mask) and not bool(mask.all())
    _close(got, want)
    # the shorter prompt alone gives its unpadded part of the batch
    alone, _ = encode_prompts(*ours, [PROMPTS[0]])
    _close(trim(got, mask)[0], alone[0])


def test_template_tokens_are_dropped(folder, ours):
    """The output starts `drop` tokens in: the template's system part is not returned."""
    enc, tok = ours
    full = tok([T2I_TEMPLATE.text.format(PROMPTS[0])], return_tensors="pt")
    got, _ = encode_prompts(enc, tok, [PROMPTS[0]])
    assert got.shape[1] == full.input_ids.shape[1] - T2I_TEMPLATE.drop
    hidden = enc(full.input_ids, full.attention_mask)
    _close(got[0], hidden[0, T2I_TEMPLATE.drop:])


def test_max_sequence_length_cuts(folder, ours):
    want, _ = _reference(folder, PROMPTS, max_sequence_length=20)
    got, mask = encode_prompts(*ours, PROMPTS, max_sequence_length=20)
    assert got.shape[1] == 20 and mask.shape == (2, 20)
    _close(got, want)
    with pytest.raises(InputError, match="max_sequence_length"):
        encode_prompts(*ours, PROMPTS, max_sequence_length=1025)


def test_the_vision_tower_and_lm_head_are_not_loaded():
    assert text_key_from_file("visual.blocks.0.attn.qkv.weight") is None
    assert text_key_from_file("model.visual.blocks.0.attn.qkv.weight") is None
    assert text_key_from_file("lm_head.weight") is None
    assert text_key_from_file("model.language_model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert text_key_from_file("model.norm.weight") == "model.norm.weight"


def test_another_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "t5", "d_model": 8}')
    with pytest.raises(CheckpointError, match="qwen2_5_vl"):
        text_config_from_file(tmp_path)


def test_loads_in_bf16_close_to_fp32(folder, ours):
    """The released encoder runs in bf16: a bf16 load stays close (RoPE tables rebuilt in fp32)."""
    root, _ = folder
    with torch.device("meta"):
        enc = QwenTextEncoder(text_config_from_file(root / "text_encoder"))
    load_into(enc, rename(read_tensors(root / "text_encoder" / "model.safetensors"), text_key_from_file),
              dtype=torch.bfloat16, what="text encoder")
    assert enc.model.rotary_emb.inv_freq.dtype == torch.float32 and not enc.model.rotary_emb.inv_freq.is_meta
    got, _ = encode_prompts(enc, ours[1], [PROMPTS[0]])
    want, _ = encode_prompts(*ours, [PROMPTS[0]])
    assert got.dtype == torch.bfloat16
    rel = ((got.float() - want).norm() / want.norm()).item()
    assert rel < 0.05, rel
