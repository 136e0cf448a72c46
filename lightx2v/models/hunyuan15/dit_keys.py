"""diffusers <-> official names of the HunyuanVideo-1.5 DiT's tensors.

Design: a table of module renames (diffusers' HunyuanVideo15Transformer3DModel -> the official
HunyuanVideo_1_5_DiffusionTransformer, as diffusers' scripts/convert_hunyuan_video1_5_to_diffusers.py
pairs them), applied per parameter (`weight` / `bias` keep their suffix). Two places are more than a
rename, so a diffusers key maps to an official key and a `part`:
- the refiner's attention: diffusers' to_q / to_k / to_v are the three row blocks of the official
  fused `self_attn_qkv` (part ("qkv", 0 | 1 | 2));
- the head's modulation: diffusers' norm_out.linear computes (scale, shift), the official
  final_layer.adaLN_modulation.1 (shift, scale): the same rows, halves swapped (part "swap").
`diffusers_key_map` is a bijection between diffusers keys and (official key, part) pairs;
`state_dict_from_diffusers` / `state_dict_to_diffusers` convert tensors with it. Unknown keys are
kept as they are, so the loader reports them: nothing is dropped silently.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import Tensor

Part = tuple | str | None

_TOP = {
    "x_embedder.proj": "img_in.proj",
    "image_embedder.norm_in": "vision_in.proj.0",
    "image_embedder.linear_1": "vision_in.proj.1",
    "image_embedder.linear_2": "vision_in.proj.3",
    "image_embedder.norm_out": "vision_in.proj.4",
    "context_embedder.time_text_embed.timestep_embedder.linear_1": "txt_in.t_embedder.mlp.0",
    "context_embedder.time_text_embed.timestep_embedder.linear_2": "txt_in.t_embedder.mlp.2",
    "context_embedder.time_text_embed.text_embedder.linear_1": "txt_in.c_embedder.linear_1",
    "context_embedder.time_text_embed.text_embedder.linear_2": "txt_in.c_embedder.linear_2",
    "context_embedder.proj_in": "txt_in.input_embedder",
    "context_embedder_2.norm": "byt5_in.layernorm",
    "context_embedder_2.linear_1": "byt5_in.fc1",
    "context_embedder_2.linear_2": "byt5_in.fc2",
    "context_embedder_2.linear_3": "byt5_in.fc3",
    "time_embed.timestep_embedder.linear_1": "time_in.mlp.0",
    "time_embed.timestep_embedder.linear_2": "time_in.mlp.2",
    "time_embed.timestep_embedder_r.linear_1": "time_r_in.mlp.0",
    "time_embed.timestep_embedder_r.linear_2": "time_r_in.mlp.2",
    "cond_type_embed": "cond_type_embedding",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
    "proj_out": "final_layer.linear",
}
_BLOCK = {
    "norm1.linear": "img_mod.linear", "norm1_context.linear": "txt_mod.linear",
    "attn.to_q": "img_attn_q", "attn.to_k": "img_attn_k", "attn.to_v": "img_attn_v",
    "attn.norm_q": "img_attn_q_norm", "attn.norm_k": "img_attn_k_norm", "attn.to_out.0": "img_attn_proj",
    "attn.add_q_proj": "txt_attn_q", "attn.add_k_proj": "txt_attn_k", "attn.add_v_proj": "txt_attn_v",
    "attn.norm_added_q": "txt_attn_q_norm", "attn.norm_added_k": "txt_attn_k_norm", "attn.to_add_out": "txt_attn_proj",
    "ff.net.0.proj": "img_mlp.fc1", "ff.net.2": "img_mlp.fc2",
    "ff_context.net.0.proj": "txt_mlp.fc1", "ff_context.net.2": "txt_mlp.fc2",
}
_REFINER = {
    "norm1": "norm1", "norm2": "norm2", "attn.to_out.0": "self_attn_proj",
    "ff.net.0.proj": "mlp.fc1", "ff.net.2": "mlp.fc2", "norm_out.linear": "adaLN_modulation.1",
}
_QKV = {"attn.to_q": 0, "attn.to_k": 1, "attn.to_v": 2}
_SWAP = "final_layer.adaLN_modulation.1"

_PARAM = re.compile(r"(?P<mod>.+)\.(?P<p>weight|bias)")
_D_BLOCK = re.compile(r"transformer_blocks\.(?P<i>\d+)\.(?P<rest>.+)")
_D_REFINER = re.compile(r"context_embedder\.token_refiner\.refiner_blocks\.(?P<i>\d+)\.(?P<rest>.+)")


def official_from_diffusers(key: str) -> tuple[str, Part]:
    """(official key, part) for a diffusers key; an unknown key comes back unchanged with part None."""
    param = _PARAM.fullmatch(key)
    if param is None:
        return key, None
    mod, p = param["mod"], param["p"]
    if m := _D_BLOCK.fullmatch(mod):
        new = _BLOCK.get(m["rest"])
        return (f"double_blocks.{m['i']}.{new}.{p}", None) if new else (key, None)
    if m := _D_REFINER.fullmatch(mod):
        prefix = f"txt_in.individual_token_refiner.blocks.{m['i']}."
        if m["rest"] in _QKV:
            return f"{prefix}self_attn_qkv.{p}", ("qkv", _QKV[m["rest"]])
        new = _REFINER.get(m["rest"])
        return (f"{prefix}{new}.{p}", None) if new else (key, None)
    new = _TOP.get(mod)
    if new is None:
        return key, None
    return f"{new}.{p}", "swap" if new == _SWAP else None


def key_from_diffusers(key: str) -> str:
    """The official key a diffusers key's tensor is (part of)."""
    return official_from_diffusers(key)[0]


_O_BLOCK = re.compile(r"double_blocks\.(?P<i>\d+)\.(?P<rest>.+)")
_O_REFINER = re.compile(r"txt_in\.individual_token_refiner\.blocks\.(?P<i>\d+)\.(?P<rest>.+)")
_INV_TOP = {v: k for k, v in _TOP.items()}
_INV_BLOCK = {v: k for k, v in _BLOCK.items()}
_INV_REFINER = {v: k for k, v in _REFINER.items()}
_INV_QKV = {v: k for k, v in _QKV.items()}


def diffusers_from_official(key: str, part: Part = None) -> str:
    """The diffusers key of (official key, part): the inverse of `official_from_diffusers`."""
    param = _PARAM.fullmatch(key)
    if param is None:
        return key
    mod, p = param["mod"], param["p"]
    if m := _O_BLOCK.fullmatch(mod):
        new = _INV_BLOCK.get(m["rest"])
        return f"transformer_blocks.{m['i']}.{new}.{p}" if new else key
    if m := _O_REFINER.fullmatch(mod):
        prefix = f"context_embedder.token_refiner.refiner_blocks.{m['i']}."
        if m["rest"] == "self_attn_qkv" and isinstance(part, tuple):
            return f"{prefix}{_INV_QKV[part[1]]}.{p}"
        new = _INV_REFINER.get(m["rest"])
        return f"{prefix}{new}.{p}" if new else key
    new = _INV_TOP.get(mod)
    return f"{new}.{p}" if new else key


def _swap_halves(w: Tensor) -> Tensor:
    a, b = w.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def state_dict_from_diffusers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A diffusers-keyed DiT state dict in official keys (the refiner's q, k, v fused, the head's
    modulation halves swapped); unknown keys are kept, for the loader to report."""
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[int, Tensor]] = {}
    for key, value in sd.items():
        new, part = official_from_diffusers(key)
        if isinstance(part, tuple):
            fused.setdefault(new, {})[part[1]] = value
        else:
            out[new] = _swap_halves(value) if part == "swap" else value
    for key, chunks in fused.items():
        if sorted(chunks) != [0, 1, 2]:
            from lightx2v.errors import CheckpointError

            raise CheckpointError(f"{key}: the diffusers checkpoint has only some of to_q / to_k / to_v for it")
        out[key] = torch.cat([chunks[0], chunks[1], chunks[2]], dim=0)
    return out


def state_dict_to_diffusers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An official-keyed DiT state dict in diffusers keys (the inverse of `state_dict_from_diffusers`)."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.endswith("self_attn_qkv.weight") or key.endswith("self_attn_qkv.bias"):
            for i, chunk in enumerate(value.chunk(3, dim=0)):
                out[diffusers_from_official(key, ("qkv", i))] = chunk
        else:
            new = diffusers_from_official(key)
            out[new] = _swap_halves(value) if key.startswith(_SWAP + ".") else value
    return out
