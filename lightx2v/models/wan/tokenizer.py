"""Prompt cleaning and the umt5 tokenizer of Wan2.1, on the `tokenizers` library alone.

Design: the official pipeline cleans each prompt (ftfy, HTML unescape twice, whitespace
collapse: `wan/modules/tokenizers.py` with clean='whitespace', the same as diffusers'
`prompt_clean`), then calls a transformers fast tokenizer with padding='max_length',
truncation=True, max_length=text_len, add_special_tokens=True. A transformers fast tokenizer
is a thin shell around a `tokenizers.Tokenizer` loaded from `tokenizer.json`, so we load that
file directly and set the same truncation (which reserves room for the `</s>` the
post-processor appends) and right padding with `<pad>`. No transformers import.

`build_tiny_tokenizer` writes a small real tokenizer folder (same structure as umt5: Unigram
pieces, Metaspace pre-tokenizer, `</s>` appended, `<pad>`=0 `</s>`=1 `<unk>`=2) for tests and
the offline demo.
"""

from __future__ import annotations

import html
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import ftfy
import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram

from lightx2v.io.atomic import make_public
from lightx2v.errors import CheckpointError

__all__ = ["WanTokenizer", "build_tiny_tokenizer", "clean_prompt"]

# The reference collapses whitespace with the `regex` package, whose `\s` is the Unicode
# White_Space set; the stdlib `\s` also matches U+001C..U+001F. Spelled out to agree exactly.
_WHITESPACE = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")

# where a model folder keeps its tokenizer: official layout, diffusers layout
_SUBFOLDERS = ("google/umt5-xxl", "tokenizer")


def clean_prompt(text: str) -> str:
    """Fix mojibake, unescape HTML (twice: doubly escaped text occurs), collapse whitespace."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


def _special_token(folder: Path, name: str, default: str) -> str:
    """A special token's text from tokenizer_config.json / special_tokens_map.json, if set there."""
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        f = folder / fname
        if not f.is_file():
            continue
        try:
            value = json.loads(f.read_text(encoding="utf-8")).get(name)
        except (ValueError, AttributeError):  # not JSON, or not a JSON object
            raise CheckpointError(f"{f} is not a valid tokenizer config (a JSON object)") from None
        if isinstance(value, dict):  # {"content": "<pad>", "lstrip": false, ...}
            value = value.get("content")
        if isinstance(value, str):
            return value
    return default


def _find_tokenizer_folder(path: Path) -> Path:
    """`path` itself if it holds tokenizer.json, else its official / diffusers subfolder."""
    for folder in (path, *(path / s for s in _SUBFOLDERS)):
        if (folder / "tokenizer.json").is_file():
            return folder
    if any((folder / "spiece.model").is_file() for folder in (path, *(path / s for s in _SUBFOLDERS))):
        raise CheckpointError(
            f"{path} has only spiece.model; expected tokenizer.json (the fast-tokenizer file shipped with "
            "google/umt5-xxl); convert it once with transformers: "
            "AutoTokenizer.from_pretrained(folder).save_pretrained(folder)"
        )
    raise CheckpointError(f"no tokenizer.json in {path} (nor in its {' or '.join(_SUBFOLDERS)} subfolder)")


class WanTokenizer:
    """Prompts -> (ids [B, text_len] long, mask [B, text_len] long), cleaned, `</s>`-terminated."""

    def __init__(self, tokenizer: Tokenizer, text_len: int = 512, pad_token: str = "<pad>", eos_token: str = "</s>"):
        """Takes ownership of `tokenizer` (its truncation and padding are overwritten)."""
        if text_len < 1:
            raise CheckpointError(f"text_len must be >= 1, got {text_len}")
        pad_id = tokenizer.token_to_id(pad_token)
        eos_id = tokenizer.token_to_id(eos_token)
        if pad_id is None or eos_id is None:
            raise CheckpointError(f"tokenizer vocabulary lacks {pad_token!r} or {eos_token!r}")
        if tokenizer.post_processor is None:
            # transformers' T5 tokenizer appends </s> itself when the file names no post-processor
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"$A {eos_token}", pair=f"$A {eos_token} $B {eos_token}", special_tokens=[(eos_token, eos_id)]
            )
        # truncation keeps room for the special tokens the post-processor adds, like transformers
        tokenizer.enable_truncation(max_length=text_len)
        tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token, length=text_len)
        self._tokenizer = tokenizer
        self.text_len = text_len
        self.pad_id = pad_id
        self.eos_id = eos_id

    @classmethod
    def from_folder(cls, path: str | Path, text_len: int = 512) -> "WanTokenizer":
        """Load `tokenizer.json` from `path` (or its `google/umt5-xxl` / `tokenizer` subfolder)."""
        folder = _find_tokenizer_folder(Path(path))
        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # the Rust side raises a bare Exception; name the file
            raise CheckpointError(f"cannot read {folder / 'tokenizer.json'} ({exc})") from exc
        pad = _special_token(folder, "pad_token", "<pad>")
        eos = _special_token(folder, "eos_token", "</s>")
        return cls(tok, text_len=text_len, pad_token=pad, eos_token=eos)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask, _ = self.encode(prompts)
        return ids, mask

    def encode(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(ids, mask, dropped): `dropped[i]` is how many tokens of prompt i fell past `text_len`
        (cut off by the encoder's limit), read off the same encoding."""
        if isinstance(prompts, str):
            prompts = [prompts]
        encs = self._tokenizer.encode_batch([clean_prompt(p) for p in prompts], add_special_tokens=True)
        ids = torch.tensor([e.ids for e in encs], dtype=torch.long).view(len(encs), self.text_len)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.long).view(len(encs), self.text_len)
        dropped = [sum(1 for o in e.overflowing for m, s in zip(o.attention_mask, o.special_tokens_mask) if m and not s)
                   for e in encs]
        return ids, mask, dropped

    def dropped_tokens(self, prompts: Sequence[str]) -> list[int]:
        """How many tokens of each prompt fall past `text_len`."""
        return self.encode(prompts)[2]


# Default vocabulary of the tiny tokenizer: words common in video prompts. Every printable
# ASCII character is also a piece, so any ASCII text tokenizes without <unk>.
_TINY_WORDS = """
a an the and or of in on at to with by from for into over under near behind under above
is are was be being has have it its this that these those there here while as
cat dog bird fish horse cow sheep rabbit fox bear lion tiger panda monkey deer wolf duck
man woman boy girl child people person crowd dancer singer chef robot astronaut knight
car train boat ship plane bicycle bus truck rocket drone
city street road bridge house tower castle forest tree trees flower flowers grass garden
park field farm mountain mountains hill river lake sea ocean beach wave waves sky cloud clouds
sun moon star stars rain snow wind fire smoke water ice sand stone rock desert island
morning night evening sunset sunrise light shadow dark bright
red orange yellow green blue purple pink white black gray golden silver
big small tall short long old young new little large tiny huge
walk walks walking run runs running jump jumps jumping fly flies flying swim swims swimming
dance dances dancing sing sings singing play plays playing sit sits sitting stand stands
look looks looking eat eats eating drink ride rides riding drive drives driving
slowly quickly gently calm happy sad beautiful cute realistic cinematic detailed
camera shot close up wide view slow motion zoom pan tracking aerial
video scene style film movie painting photo anime cartoon 4k hd quality
background foreground left right top bottom center front back side
one two three many some every each all
"""


def _tiny_pieces(words: Sequence[str]) -> list[tuple[str, float]]:
    """Unigram pieces with scores: specials, then "▁word" (likely), then single characters."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    seen = {p for p, _ in pieces}
    for i, w in enumerate(words):
        for piece, score in ((f"\u2581{w}", -5.0 - 0.001 * i), (w, -8.0 - 0.001 * i)):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, score))
    for c in (chr(i) for i in range(33, 127)):
        for piece, score in ((c, -10.0), (f"\u2581{c}", -11.0)):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, score))
    return pieces


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        make_public(tmp)  # mkstemp made it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_tiny_tokenizer(folder: str | Path, vocab: Sequence[str] | None = None) -> Path:
    """Write a small umt5-like tokenizer (tokenizer.json + configs) into `folder`; returns it.

    `vocab`: words (without the "▁" word-start mark); default: a few hundred common ones.
    Loadable by `WanTokenizer.from_folder` and by transformers' `AutoTokenizer` alike.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = _TINY_WORDS.split() if vocab is None else list(vocab)
    tok = Tokenizer(Unigram(_tiny_pieces(words), unk_id=2, byte_fallback=False))
    # the pre-tokenizer transformers' T5Tokenizer installs: split on whitespace, mark word starts
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    specials = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    config = {
        "tokenizer_class": "T5Tokenizer",  # as google/umt5-xxl
        **specials,
        "extra_ids": 0,  # no <extra_id_*> sentinels: keeps the vocabulary exactly the pieces above
        "additional_special_tokens": [],
        "model_max_length": 512,
    }
    _write_atomic(folder / "tokenizer.json", tok.to_str(pretty=True))
    _write_atomic(folder / "tokenizer_config.json", json.dumps(config, indent=2))
    _write_atomic(folder / "special_tokens_map.json", json.dumps(specials, indent=2))
    return folder
