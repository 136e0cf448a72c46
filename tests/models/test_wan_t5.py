"""UMT5 encoder and tokenizer of Wan2.1 against transformers / diffusers (the parity oracles)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightx2v.errors import CheckpointError
from lightx2v.loading.state_dict import load_into, read_tensors, rename
from lightx2v.models.wan.t5 import (
    UMT5Config,
    UMT5Encoder,
    encode_text,
    relative_position_bucket,
    t5_key_from_transformers,
)
from lightx2v.models.wan.tokenizer import WanTokenizer, build_tiny_tokenizer, clean_prompt

transformers = pytest.importorskip("transformers")

TEXT_LEN = 24
PROMPTS = ["A red fox runs through the snowy forest at sunrise.", "cat"]


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    err = (out - ref).abs().max().item()
    assert err <= 1e-4 * ref.abs().max().item(), f"max abs error {err}"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "google" / "umt5-xxl")


@pytest.fixture(scope="module")
def hf_config(tok_dir: Path):
    vocab = WanTokenizer.from_folder(tok_dir).vocab_size
    cfg = transformers.UMT5Config(
        vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2, dropout_rate=0.0
    )
    cfg._attn_implementation = "eager"
    return cfg


@pytest.fixture(scope="module")
def hf_model(hf_config):
    torch.manual_seed(0)
    model = transformers.UMT5EncoderModel(hf_config).eval()
    with torch.no_grad():  # random everything, norms and relative biases included
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5 * (3.0 if name == "shared.weight" else 1.0))
    return model


def _official_sd(hf_model) -> dict[str, torch.Tensor]:
    return rename(hf_model.state_dict(), t5_key_from_transformers)


def _ours(cfg: UMT5Config, sd: dict[str, torch.Tensor], dtype=torch.float32) -> UMT5Encoder:
    with torch.device("meta"):
        model = UMT5Encoder(cfg)
    return load_into(model, sd, dtype=dtype, keep_fp32=UMT5Encoder._keep_in_fp32, what="t5").eval()


def _tiny_cfg(hf_config) -> UMT5Config:
    return UMT5Config(vocab_size=hf_config.vocab_size, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2)


def test_config_from_transformers(hf_config, tmp_path: Path) -> None:
    hf_config.save_pretrained(tmp_path)
    assert UMT5Config.from_transformers(json.loads((tmp_path / "config.json").read_text())) == _tiny_cfg(hf_config)
    xxl = transformers.UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24)
    assert UMT5Config.from_transformers(xxl.to_dict()) == UMT5Config()
    with pytest.raises(CheckpointError, match="gated-gelu"):
        UMT5Config.from_transformers({**xxl.to_dict(), "feed_forward_proj": "relu"})
    with pytest.raises(CheckpointError, match="d_ff"):
        UMT5Config.from_transformers({k: v for k, v in xxl.to_dict().items() if k != "d_ff"})


def test_key_map_gives_official_names(hf_model, hf_config) -> None:
    sd = _official_sd(hf_model)
    with torch.device("meta"):
        ours = UMT5Encoder(_tiny_cfg(hf_config))
    assert sd.keys() == ours.state_dict().keys()
    assert "blocks.1.ffn.gate.0.weight" in sd and "blocks.1.pos_embedding.embedding.weight" in sd
    # wi_0 goes through the GELU (official gate.0), wi_1 is the linear branch (fc1)
    ff = hf_model.encoder.block[1].layer[1].DenseReluDense
    assert torch.equal(sd["blocks.1.ffn.gate.0.weight"], ff.wi_0.weight)
    assert torch.equal(sd["blocks.1.ffn.fc1.weight"], ff.wi_1.weight)
    assert t5_key_from_transformers("encoder.embed_tokens.weight") is None
    assert t5_key_from_transformers("lm_head.weight") == "lm_head.weight"  # left for load_into to report
    with pytest.raises(CheckpointError, match="unexpected keys: lm_head.weight"):
        _ours(_tiny_cfg(hf_config), {**sd, "lm_head.weight": torch.zeros(1)})


def test_relative_buckets_match_transformers(hf_model) -> None:
    attn = hf_model.encoder.block[0].layer[0].SelfAttention
    lq = lk = 300  # beyond max_distance=128, so the log buckets and the cap are exercised
    rel = torch.arange(lk)[None, :] - torch.arange(lq)[:, None]
    ours = relative_position_bucket(lq, lk, 32, 128, bidirectional=True)
    assert torch.equal(ours, attn._relative_position_bucket(rel))
    assert ours.min() == 0 and ours.max() == 31


@pytest.mark.parametrize("length", [TEXT_LEN, 200])
def test_encoder_matches_transformers(hf_model, hf_config, tok_dir: Path, length: int) -> None:
    if length == TEXT_LEN:  # real tokenized prompts of different lengths, right-padded
        ids, mask = WanTokenizer.from_folder(tok_dir, text_len=TEXT_LEN)(PROMPTS)
    else:  # long random batch: far offsets land in the capped bucket
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(3, hf_config.vocab_size, (2, length), generator=gen)
        mask = (torch.arange(length)[None, :] < torch.tensor([[170], [37]])).long()
    lengths = mask.sum(1).tolist()
    assert lengths[0] != lengths[1] and max(lengths) < length
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask).last_hidden_state
        out = _ours(_tiny_cfg(hf_config), _official_sd(hf_model))(ids, mask)
    _close(out, ref)  # padded positions too: they attend to the real tokens in both
    trimmed = encode_text(_ours(_tiny_cfg(hf_config), _official_sd(hf_model)), ids, mask)
    assert [t.shape[0] for t in trimmed] == lengths
    for t, r, n in zip(trimmed, ref, lengths):
        _close(t, r[:n])
    # the mask matters: without it the real tokens see the padding
    with torch.no_grad():
        unmasked = _ours(_tiny_cfg(hf_config), _official_sd(hf_model))(ids)
    assert (unmasked[1, : lengths[1]] - ref[1, : lengths[1]]).abs().max() > 1e-3


def test_official_pth_roundtrip_and_bf16(hf_model, hf_config, tok_dir: Path, tmp_path: Path) -> None:
    sd = _official_sd(hf_model)
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save({k: v.clone() for k, v in sd.items()}, path)
    ids, mask = WanTokenizer.from_folder(tok_dir, text_len=TEXT_LEN)(PROMPTS)
    cfg = _tiny_cfg(hf_config)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask).last_hidden_state
        out = _ours(cfg, read_tensors(path))(ids, mask)
        _close(out, ref)
        # the real file is bf16: the encoder runs in bf16 end to end and stays close
        bf16 = _ours(cfg, read_tensors(path), dtype=torch.bfloat16)
        assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
        low = bf16(ids, mask)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() <= 5e-2 * ref.abs().max()


CLEAN_CASES = [
    "  A cat &amp; a dog\n\n\tplaying   together  ",
    "Tom &amp;amp; Jerry",  # doubly escaped
    "fianc\u00c3\u00a9 in a caf\u00c3\u00a9",  # mojibake (utf-8 read as latin-1)
    "wide\u3000space\u00a0and\u2009thin",
    "a\x1cb\x1fc",
    "&lt;b&gt;bold&lt;/b&gt; text",
    "",
]


@pytest.mark.parametrize("text", CLEAN_CASES)
def test_clean_prompt_matches_diffusers(text: str) -> None:
    pytest.importorskip("diffusers")
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    assert clean_prompt(text) == prompt_clean(text)


def test_clean_prompt_values() -> None:
    assert clean_prompt(CLEAN_CASES[0]) == "A cat & a dog playing together"
    assert clean_prompt(CLEAN_CASES[2]) == "fianc\u00e9 in a caf\u00e9"


def test_tokenizer_matches_transformers(tok_dir: Path) -> None:
    prompts = [
        *PROMPTS,
        "the " * 40 + "end",  # longer than TEXT_LEN: truncated, </s> kept
        *CLEAN_CASES,
        "\u732b\u5728\u8349\u5730\u4e0a a cat",  # unknown characters -> <unk>
    ]
    ours = WanTokenizer.from_folder(tok_dir, text_len=TEXT_LEN)
    hf = transformers.AutoTokenizer.from_pretrained(tok_dir)
    ref = hf(
        [clean_prompt(p) for p in prompts],
        padding="max_length",
        truncation=True,
        max_length=TEXT_LEN,
        add_special_tokens=True,
        return_tensors="pt",
    )
    ids, mask = ours(prompts)
    assert ids.dtype == mask.dtype == torch.long and ids.shape == (len(prompts), TEXT_LEN)
    assert torch.equal(ids, ref.input_ids) and torch.equal(mask, ref.attention_mask)
    assert ours.vocab_size == len(hf)
    # truncation keeps the EOS at the end; the empty prompt is just </s>
    assert mask[2].all() and ids[2, -1].item() == 1
    assert ids[len(PROMPTS) + 1 + CLEAN_CASES.index("")].tolist() == [1] + [0] * (TEXT_LEN - 1)
    n0 = int(mask[0].sum())
    assert ids[0, n0 - 1].item() == 1 and (ids[0, n0:] == 0).all()
    assert 2 in ids[-1].tolist()  # <unk>
    # cleaning happens inside: the raw and the cleaned prompt tokenize alike
    assert torch.equal(ours([CLEAN_CASES[0]])[0], ours([clean_prompt(CLEAN_CASES[0])])[0])


def test_tokenizer_folder_layouts(tok_dir: Path, tmp_path: Path) -> None:
    root = tok_dir.parent.parent  # official layout: <root>/google/umt5-xxl/tokenizer.json
    a = WanTokenizer.from_folder(root, text_len=TEXT_LEN)(PROMPTS)[0]
    diffusers_root = tmp_path / "diffusers"
    build_tiny_tokenizer(diffusers_root / "tokenizer")
    b = WanTokenizer.from_folder(diffusers_root, text_len=TEXT_LEN)(PROMPTS)[0]
    assert torch.equal(a, b)


def test_tokenizer_spiece_only_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "google" / "umt5-xxl"
    folder.mkdir(parents=True)
    (folder / "spiece.model").write_bytes(b"\x0a\x00")
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        WanTokenizer.from_folder(folder)
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        WanTokenizer.from_folder(tmp_path / "empty")
