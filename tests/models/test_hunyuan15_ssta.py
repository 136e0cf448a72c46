"""The HunyuanVideo-1.5 DiT with SSTA (attn_mode flex-block-attn): its attn_param read and refused by field,
the sparse forward through the "ssta" backend (FlexAttention) against the same DiT on the tile-by-tile
reference, and the cases where SSTA must equal dense attention (every tile chosen; win_type hybrid's
dense blocks)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightx2v.errors import CheckpointError
from lightx2v.models.hunyuan15.dit import HunyuanVideo15DiT
from lightx2v.models.hunyuan15.dit_config import HunyuanVideo15DiTConfig
from lightx2v.ops.attention import AttentionBackend, get_backend, set_attention_backend
from lightx2v.ops.ssta import SSTAConfig, ssta_reference

REFERENCE_DEFAULTS = {  # the reference's attn_param (HunyuanVideo_1_5_DiffusionTransformer), as a config saves it
    "win_size": [[3, 3, 3]], "win_type": "fixed", "win_ratio": 10, "tile_size": [6, 8, 8], "ssta_topk": 64,
    "ssta_threshold": 0.0, "ssta_lambda": 0.7, "ssta_sampling_type": "importance", "ssta_adaptive_pool": None,
    "attn_sparse_type": "ssta", "attn_pad_type": "zero", "attn_use_text_mask": 1, "attn_mask_share_within_head": 0,
    "thw": [31, 30, 53], "layer-name": "double_block_54",
}
TINY = dict(in_channels=4, out_channels=4, hidden_size=32, heads_num=2, mlp_width_ratio=2.0, num_layers=2,
            num_refiner_layers=1, rope_dim_list=(4, 6, 6), text_states_dim=24, byt5_dim=20, vision_states_dim=12)
# latent grid (2, 4, 6), tiles of 1x2x2: 12 tiles; a tile attends itself and its top-2 (4 // 2: <= 31 frames)
SPARSE = {"tile_size": [1, 2, 2], "win_size": [[1, 1, 1]], "ssta_topk": 4}


def _official(param) -> HunyuanVideo15DiTConfig:
    return HunyuanVideo15DiTConfig.from_official({"attn_mode": "flex-block-attn", "attn_param": param})


def test_attn_param_is_read_with_the_references_defaults() -> None:
    assert _official(REFERENCE_DEFAULTS).sparse_attention() == SSTAConfig()
    assert _official(None).sparse_attention() == SSTAConfig()  # no attn_param: the reference's defaults
    hybrid = _official({**REFERENCE_DEFAULTS, "win_type": "hybrid", "attn_mask_share_within_head": 1})
    assert hybrid.sparse_attention() == SSTAConfig(dense_every=10, share_heads=True)
    assert HunyuanVideo15DiTConfig.from_official({"attn_mode": "flash"}).sparse_attention() is None


@pytest.mark.parametrize("over, match", [
    ({"attn_sparse_type": "sta"}, "attn_sparse_type = 'sta' is not supported"),
    ({"ssta_threshold": 0.5}, "ssta_threshold"),
    ({"ssta_adaptive_pool": [2, 2, 2]}, "ssta_adaptive_pool"),
    ({"attn_use_text_mask": 0}, "attn_use_text_mask"),
    ({"win_type": "other"}, "win_type"),
    ({"ssta_sampling_type": "random"}, "sampling"),
    ({"tile": [1, 2, 2]}, "field 'tile' is unknown"),
])
def test_attn_param_we_cannot_run_is_refused_by_name(over, match) -> None:
    with pytest.raises(CheckpointError, match=match):
        _official({**REFERENCE_DEFAULTS, **over})


def _dit(param=SPARSE) -> HunyuanVideo15DiT:
    cfg = HunyuanVideo15DiTConfig(**TINY, attn_mode="flex-block-attn", attn_param=param)
    torch.manual_seed(0)
    model = HunyuanVideo15DiT(cfg)
    with torch.no_grad():
        for p in model.parameters():  # some layers start at zero in the reference: make every tensor count
            p.normal_(0, 0.2)
    return model.eval()


def _inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(x=torch.randn(batch, 9, 2, 4, 6, generator=g), t=torch.tensor([500.0, 730.0])[:batch],
                text=torch.randn(batch, 7, 24, generator=g),
                text_mask=torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]])[:batch],
                byt5=torch.randn(batch, 5, 20, generator=g), byt5_mask=torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])[:batch])


def _run(model, backend, i) -> torch.Tensor:
    set_attention_backend(model.double_blocks, backend)
    with torch.no_grad():
        return model(i["x"], i["t"], i["text"], i["text_mask"], i["byt5"], i["byt5_mask"])


REFERENCE_SSTA = AttentionBackend("ssta_reference", lambda d, t: None, get_backend("torch_sdpa").kernel,
                                  layout_kernel=ssta_reference)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_sparse_forward_matches_the_reference_and_is_not_dense() -> None:
    """Batch 2 with unequal conditioning lengths (one sample at a time through the backend)."""
    model, i = _dit(), _inputs(2)
    assert model.sparse == SSTAConfig(tile=(1, 2, 2), window=(1, 1, 1), topk=4)
    flex = _run(model, get_backend("ssta"), i)
    ref = _run(model, REFERENCE_SSTA, i)
    dense = _run(model, get_backend("torch_sdpa"), i)  # a dense backend ignores the layout
    assert flex.shape == dense.shape == (2, 4, 2, 4, 6)
    assert _rel(flex, ref) < 1e-5
    assert _rel(flex, dense) > 1e-3


def test_every_tile_chosen_is_dense_attention() -> None:
    model, i = _dit({**SPARSE, "ssta_topk": 99}), _inputs(1)
    assert _rel(_run(model, get_backend("ssta"), i), _run(model, get_backend("torch_sdpa"), i)) < 1e-5


def test_hybrid_windows_leave_their_blocks_dense() -> None:
    """win_type hybrid, win_ratio 1: every block is a dense one: the output is dense attention's."""
    model, i = _dit({**SPARSE, "win_type": "hybrid", "win_ratio": 1}), _inputs(1)
    assert _rel(_run(model, get_backend("ssta"), i), _run(model, get_backend("torch_sdpa"), i)) < 1e-6
    model.sparse = dataclasses.replace(model.sparse, dense_every=2)  # block 1 (the last) dense, block 0 sparse
    assert _rel(_run(model, get_backend("ssta"), i), _run(model, get_backend("torch_sdpa"), i)) > 1e-3
