"""LoRA names of the HunyuanVideo-1.5 DiT that are not our (official) module names: the alias table.

Design: the DiT's modules have the official names, so LoRAs in official names (LightX2V, musubi-tuner,
`diffusion_model.` files: `double_blocks.0.img_attn_q`) and Kohya's underscored form of them resolve as they
are. Two other namings reach layers that are split, fused or ordered differently here, so they are listed
as row pieces (lightx2v.loading.lora_alias) for the generic LoRA reader:

- diffusers / PEFT (`transformer.transformer_blocks.0.attn.to_q`, HunyuanVideo15Transformer3DModel's
  names; the map is dit_keys.py's): the refiner's `attn.to_q / to_k / to_v` are the three row blocks of
  our fused `self_attn_qkv` (three pairs on it: a block-diagonal pair), and `norm_out.linear` computes
  (scale, shift) where our `final_layer.adaLN_modulation.1` computes (shift, scale): its halves swap.
  Every other diffusers layer is a one-to-one alias.
- ComfyUI's HunyuanVideo module names (comfy/ldm/hunyuan_video/model.py: the Flux-style double block,
  `img_attn.qkv` fused, `img_attn.proj`, `img_mod.lin`, `img_mlp.0` / `.2`; the refiner's `self_attn.qkv`,
  `self_attn.proj`, `mlp.0` / `.2`; MLPEmbedder's `in_layer` / `out_layer`): a fused `img_attn.qkv` pair
  gives each of our q, k, v its shared `down` and its third of `up`.
"""

from __future__ import annotations

import re

from torch import nn

from lightx2v.loading.lora_alias import RowPiece
from lightx2v.models.hunyuan15.dit_keys import diffusers_from_official

_BLOCK_COMFY = {"attn.proj": "attn_proj", "mod.lin": "mod.linear", "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}
_REFINER_COMFY = {"self_attn.qkv": "self_attn_qkv", "self_attn.proj": "self_attn_proj", "mlp.0": "mlp.fc1",
                  "mlp.2": "mlp.fc2"}
_EMBED_COMFY = {"time_in": ("mlp.0", "mlp.2"), "time_r_in": ("mlp.0", "mlp.2"),
                "txt_in.t_embedder": ("mlp.0", "mlp.2"), "txt_in.c_embedder": ("linear_1", "linear_2")}
_REFINER = re.compile(r"txt_in\.individual_token_refiner\.blocks\.\d+")
_SWAP = "final_layer.adaLN_modulation.1"


def _rows(module: nn.Module) -> int:
    out = getattr(module, "out_features", None)
    return int(out) if out is not None else int(module.weight.shape[0])


def _diffusers(modules: dict[str, nn.Module]) -> dict[str, tuple[RowPiece, ...]]:
    out: dict[str, tuple[RowPiece, ...]] = {}
    for path, module in modules.items():
        n = _rows(module)
        if _REFINER.fullmatch(path.rpartition(".")[0]) and path.endswith(".self_attn_qkv"):
            h = n // 3
            for i in range(3):
                name = diffusers_from_official(f"{path}.weight", ("qkv", i)).removesuffix(".weight")
                out[name] = (RowPiece(path, None, (i * h, (i + 1) * h)),)
            continue
        name = diffusers_from_official(f"{path}.weight").removesuffix(".weight")
        if path == _SWAP:
            h = n // 2
            out[name] = (RowPiece(path, (0, h), (h, n)), RowPiece(path, (h, n), (0, h)))
        elif name != path:
            out[name] = (RowPiece(path),)
    return out


def _comfyui(modules: dict[str, nn.Module]) -> dict[str, tuple[RowPiece, ...]]:
    out: dict[str, tuple[RowPiece, ...]] = {}
    for path, module in modules.items():
        parent, _, leaf = path.rpartition(".")
        if parent.startswith("double_blocks.") and re.fullmatch(r"(img|txt)_attn_q", leaf):
            s, h = leaf[:3], _rows(module)
            out[f"{parent}.{s}_attn.qkv"] = tuple(
                RowPiece(f"{parent}.{s}_attn_{p}", (i * h, (i + 1) * h)) for i, p in enumerate("qkv"))
    for ours in modules:
        for stack, table in (("double_blocks.", _BLOCK_COMFY), ("txt_in.individual_token_refiner.", _REFINER_COMFY)):
            if not ours.startswith(stack):
                continue
            for theirs, mine in table.items():
                for s in (("img_", "txt_") if stack == "double_blocks." else ("",)):
                    if ours.endswith(f".{s}{mine}"):
                        out[ours[: -len(s + mine)] + s + theirs] = (RowPiece(ours),)
    for embed, (first, second) in _EMBED_COMFY.items():
        if f"{embed}.{first}" in modules:
            out[f"{embed}.in_layer"] = (RowPiece(f"{embed}.{first}"),)
            out[f"{embed}.out_layer"] = (RowPiece(f"{embed}.{second}"),)
    return out


def lora_aliases(model: nn.Module) -> dict[str, tuple[RowPiece, ...]]:
    """{file module path: row pieces} for the diffusers and ComfyUI names of `model`'s linear layers."""
    modules = {n: m for n, m in model.named_modules()
               if isinstance(m, nn.Linear) or callable(getattr(m, "dequantize_weight", None))}
    return {**_diffusers(modules), **_comfyui(modules)}
