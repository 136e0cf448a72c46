"""HunyuanVideo-1.5's text conditioning (lightx2v.models.hunyuan15.text) against diffusers'
HunyuanVideo15Pipeline.encode_prompt on identical tiny random encoders: a Qwen2.5-VL text model with a
byte-level Qwen2 tokenizer (the Qwen chat format) and a byT5 encoder with the real ByT5 tokenizer."""

from __future__ import annotations

import inspect

import pytest
import torch

from lightx2v.models.hunyuan15 import text as hy_text

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

# the Qwen2.5 chat format (the released template renders text-only turns exactly so)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPTS = ['A neon sign reads "OPEN 24H" above a door', "a cat walks on the grass", "",
           "“你好” and \"hi\" and \"hi\""]
TEXT_LEN, GLYPH_LEN = 64, 32


def _byte_chars() -> list[str]:
    """The byte-level BPE alphabet: printable bytes as themselves, the others shifted past 255."""
    keep = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


@pytest.fixture(scope="module")
def encoders():
    tok = transformers.Qwen2Tokenizer(vocab={c: i for i, c in enumerate(_byte_chars())}, merges=[])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    llm = transformers.Qwen2_5_VLTextModel(transformers.Qwen2_5_VLTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024,
        rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})).eval()
    byt5_tok = transformers.ByT5Tokenizer()
    byt5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(byt5_tok), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2)).eval()
    return llm, tok, byt5, byt5_tok


def _reference(encoders, crop_start: int, system: str):
    llm, tok, byt5, byt5_tok = encoders
    with torch.device("meta"):  # the pipeline reads only the VAE's config; encode_prompt needs no transformer
        vae = diffusers.AutoencoderKLHunyuanVideo15(block_out_channels=(4, 8, 16, 32, 64), layers_per_block=1)
    pipe = diffusers.HunyuanVideo15Pipeline(text_encoder=llm, tokenizer=tok, transformer=None, vae=vae,
                                            scheduler=None, text_encoder_2=byt5, tokenizer_2=byt5_tok, guider=None)
    pipe.tokenizer_max_length, pipe.tokenizer_2_max_length = TEXT_LEN, GLYPH_LEN
    pipe.prompt_template_encode_start_idx, pipe.system_message = crop_start, system
    return pipe


def test_constants_are_the_references():
    pipe_cls = diffusers.HunyuanVideo15Pipeline
    defaults = inspect.signature(pipe_cls._get_mllm_prompt_embeds).parameters
    assert hy_text.SYSTEM_MESSAGE == defaults["system_message"].default
    assert hy_text.CROP_START == defaults["crop_start"].default == 108
    assert hy_text.TEXT_LEN == defaults["tokenizer_max_length"].default == 1000
    assert hy_text.HIDDEN_LAYERS_SKIPPED == defaults["num_hidden_layers_to_skip"].default
    assert hy_text.GLYPH_LEN == inspect.signature(pipe_cls._get_byt5_prompt_embeds).parameters[
        "tokenizer_max_length"].default


def test_crop_start_is_after_the_user_marker(encoders):
    _, tok, _, _ = encoders
    n = hy_text.crop_start_of(tok)
    rendered = tok.apply_chat_template([[{"role": "system", "content": hy_text.SYSTEM_MESSAGE},
                                         {"role": "user", "content": "xyz"}]], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"][0]
    assert tok.decode(rendered[n : n + 3]) == "xyz"  # byte-level: 3 tokens
    assert tok.decode(rendered[:n]).endswith("<|im_start|>user\n")


def test_crop_start_refuses_a_foreign_chat_template(encoders):
    from lightx2v.errors import CheckpointError

    _, tok, _, _ = encoders
    saved, tok.chat_template = tok.chat_template, "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    try:
        with pytest.raises(CheckpointError, match="Qwen2.5-VL tokenizer"):
            hy_text.crop_start_of(tok)
    finally:
        tok.chat_template = saved


@pytest.mark.parametrize("crop", ["released", "computed"])
def test_encode_prompt_matches_diffusers(encoders, crop):
    """The released template and crop (which cuts this byte-level tokenizer's system turn short), and a
    short system turn with the crop found as the official code finds it (the whole template dropped)."""
    llm, tok, byt5, byt5_tok = encoders
    system = hy_text.SYSTEM_MESSAGE if crop == "released" else "Describe the video."
    crop_start = hy_text.CROP_START if crop == "released" else hy_text.crop_start_of(tok, system)
    ref = _reference(encoders, crop_start, system)
    want = ref.encode_prompt(PROMPTS, device=torch.device("cpu"), dtype=torch.float32, batch_size=len(PROMPTS))
    got = hy_text.encode_prompt(llm, tok, byt5, byt5_tok, PROMPTS, text_len=TEXT_LEN, crop_start=crop_start,
                                glyph_len=GLYPH_LEN, system=system)
    assert got.text.shape == (4, TEXT_LEN, 32) and got.glyph.shape == (4, GLYPH_LEN, 16)
    for ours, theirs in zip((got.text, got.text_mask, got.glyph, got.glyph_mask), want):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-5, atol=1e-6)
    assert got.text_mask.dtype == got.glyph_mask.dtype == torch.int64
    if crop == "computed":  # the mask covers the prompt (bytes here) and the 13 tokens closing the chat
        assert got.text_mask.sum(1).tolist()[:3] == [len(PROMPTS[0]) + 13, len(PROMPTS[1]) + 13, 1 + 13]
    # the prompt with no quoted text has no glyph tokens; the others do
    assert got.glyph_mask.sum(1).tolist()[1] == 0 and all(got.glyph_mask.sum(1)[[0, 3]] > 0)
    assert not got.glyph[1].any()


def test_glyph_texts_and_prompt():
    assert hy_text.glyph_texts('say "a" then “b” then "a"') == ["a", "b"]  # duplicates dropped
    assert hy_text.glyph_texts('one "x"') == ["x"]
    assert hy_text.glyph_prompt('sign "OPEN" and “关”') == 'Text "OPEN". Text "关". '
    assert hy_text.glyph_prompt("no quotes") is None
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import extract_glyph_texts

    for p in PROMPTS:
        assert hy_text.glyph_prompt(p) == extract_glyph_texts(p)


def test_glyph_off_is_the_official_negative_branch(encoders):
    llm, tok, byt5, byt5_tok = encoders
    got = hy_text.encode_prompt(llm, tok, byt5, byt5_tok, PROMPTS[0], glyph=False, text_len=TEXT_LEN,
                                glyph_len=GLYPH_LEN)
    assert got.text.shape[0] == 1 and not got.glyph.any() and not got.glyph_mask.any()


def test_long_prompt_is_truncated_to_text_len(encoders):
    llm, tok, _, _ = encoders
    states, mask = hy_text.encode_text(llm, tok, ["word " * 40], text_len=TEXT_LEN)
    assert states.shape == (1, TEXT_LEN, 32) and bool(mask.all())
