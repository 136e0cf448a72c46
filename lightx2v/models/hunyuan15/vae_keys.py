"""diffusers <-> official names of the HunyuanVideo-1.5 VAE's tensors.

Design: the two layouts hold the same tensors (no split, no transpose); only module paths differ, as
diffusers' scripts/convert_hunyuan_video1_5_to_diffusers.py pairs them:

    official (AutoencoderKLConv3D)          diffusers (AutoencoderKLHunyuanVideo15)
    encoder.down.{i}.block.{j}.             encoder.down_blocks.{i}.resnets.{j}.
    encoder.down.{i}.downsample.            encoder.down_blocks.{i}.downsamplers.0.
    decoder.up.{i}.block.{j}.               decoder.up_blocks.{i}.resnets.{j}.
    decoder.up.{i}.upsample.                decoder.up_blocks.{i}.upsamplers.0.
    {en,de}coder.mid.block_1. / block_2.    {en,de}coder.mid_block.resnets.0. / resnets.1.
    {en,de}coder.mid.attn_1.{q,k,v}.        {en,de}coder.mid_block.attentions.0.to_{q,k,v}.
    ....nin_shortcut.                       ....conv_shortcut.   (a block that changes width)

Everything else (conv_in, conv_out, norm_out, the `.conv.` of a causal conv, `gamma`, proj_out) is
named alike. Each direction is a list of regex rewrites of the key's module path; a key that no rule
matches is returned unchanged, so the loader reports it (nothing is dropped silently).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

__all__ = ["diffusers_from_official", "official_from_diffusers", "state_dict_from_diffusers",
           "state_dict_to_diffusers"]

_P = r"^(encoder|decoder)\."
# (official pattern, official template, diffusers pattern, diffusers template)
_RULES = (
    (_P + r"down\.(\d+)\.block\.(\d+)\.", r"\1.down.\2.block.\3.",
     _P + r"down_blocks\.(\d+)\.resnets\.(\d+)\.", r"\1.down_blocks.\2.resnets.\3."),
    (_P + r"down\.(\d+)\.downsample\.", r"\1.down.\2.downsample.",
     _P + r"down_blocks\.(\d+)\.downsamplers\.0\.", r"\1.down_blocks.\2.downsamplers.0."),
    (_P + r"up\.(\d+)\.block\.(\d+)\.", r"\1.up.\2.block.\3.",
     _P + r"up_blocks\.(\d+)\.resnets\.(\d+)\.", r"\1.up_blocks.\2.resnets.\3."),
    (_P + r"up\.(\d+)\.upsample\.", r"\1.up.\2.upsample.",
     _P + r"up_blocks\.(\d+)\.upsamplers\.0\.", r"\1.up_blocks.\2.upsamplers.0."),
    (_P + r"mid\.block_1\.", r"\1.mid.block_1.", _P + r"mid_block\.resnets\.0\.", r"\1.mid_block.resnets.0."),
    (_P + r"mid\.block_2\.", r"\1.mid.block_2.", _P + r"mid_block\.resnets\.1\.", r"\1.mid_block.resnets.1."),
    (_P + r"mid\.attn_1\.([qkv])\.", r"\1.mid.attn_1.\2.",
     _P + r"mid_block\.attentions\.0\.to_([qkv])\.", r"\1.mid_block.attentions.0.to_\2."),
    (_P + r"mid\.attn_1\.", r"\1.mid.attn_1.", _P + r"mid_block\.attentions\.0\.", r"\1.mid_block.attentions.0."),
)
_TO_DIFFUSERS = tuple((re.compile(op), dt) for op, _, _, dt in _RULES)
_TO_OFFICIAL = tuple((re.compile(dp), ot) for _, ot, dp, _ in _RULES)


def _rewrite(key: str, rules, shortcut: tuple[str, str]) -> str:
    for pattern, template in rules:
        new, n = pattern.subn(template, key, count=1)
        if n:
            return new.replace(*shortcut)
    return key


def official_from_diffusers(key: str) -> str:
    """The official key of a diffusers `AutoencoderKLHunyuanVideo15` key (unknown keys: unchanged)."""
    return _rewrite(key, _TO_OFFICIAL, (".conv_shortcut.", ".nin_shortcut."))


def diffusers_from_official(key: str) -> str:
    """The diffusers key of an official VAE key (unknown keys: unchanged)."""
    return _rewrite(key, _TO_DIFFUSERS, (".nin_shortcut.", ".conv_shortcut."))


def state_dict_from_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers VAE state dict in the official names (the same tensors, not copied)."""
    return {official_from_diffusers(k): v for k, v in sd.items()}


def state_dict_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official VAE state dict in diffusers' names (the same tensors, not copied)."""
    return {diffusers_from_official(k): v for k, v in sd.items()}
