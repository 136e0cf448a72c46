"""The Qwen-Image-2.1 DiT against diffusers' QwenImage21Transformer2DModel on the same random weights:
text-to-image, a condition image in the middle of the text (block-causal prefix), a batch of two,
and the prefix K/V kept across calls (context_kv) giving what a fresh prefix gives."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from lightx2v.errors import CheckpointError, InputError  # noqa: E402
from lightx2v.models.qwen_image.dit21 import Prompt21, QwenImage21DiT, QwenImage21DiTConfig  # noqa: E402
from lightx2v.models.qwen_image.dit21_blocks import joint_positions, prefix_segments  # noqa: E402
from lightx2v.runtime.context_kv import ContextKVCache  # noqa: E402

CFG = dict(in_channels=8, out_channels=8, num_layers=2, attention_head_dim=16, num_attention_heads=2,
           context_in_dim=24, mlp_ratio=3, axes_dims_rope=[4, 6, 6])
H, W = 4, 6


@pytest.fixture(scope="module")
def pair():
    from diffusers import QwenImage21Transformer2DModel

    torch.manual_seed(0)
    ref = QwenImage21Transformer2DModel(**CFG).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ours = QwenImage21DiT(QwenImage21DiTConfig.from_diffusers(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _ref(ref, x, ctx, t, shapes, img_mask):
    with torch.no_grad():
        out = ref(hidden_states=x, encoder_hidden_states=ctx, timestep=t / 1000, img_shapes=[shapes] * x.shape[0],
                  img_mask=img_mask, return_dict=False)[0]
    return out[:, -H * W:]


@pytest.mark.parametrize("batch", [1, 2])
def test_text_to_image_matches_diffusers(pair, batch):
    ref, ours = pair
    g = torch.Generator().manual_seed(batch)
    ctx = torch.randn(1, 7, 24, generator=g).expand(batch, -1, -1)
    x = torch.randn(batch, H * W, 8, generator=g)
    t = torch.tensor([700.0, 250.0][:batch])
    mask = torch.cat([torch.zeros(batch, 7, dtype=torch.bool), torch.ones(batch, H * W // 4, dtype=torch.bool)], 1)
    want = _ref(ref, x, ctx, t, [(1, H, W)], mask)
    with torch.no_grad():
        got = ours(x, t, Prompt21(ctx), (H, W))
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got - want).abs().max() < 1e-4 * want.abs().max()


def test_condition_image_in_the_text_matches_diffusers(pair):
    """2 image slots (a 2 x 4 latent image) between text tokens: the image block is bidirectional, the
    text after it causal; the reference's KV-cache modes agree with its full pass, and ours with both."""
    from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21KVCache

    ref, ours = pair
    g = torch.Generator().manual_seed(3)
    slots = torch.tensor([0, 0, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    ctx, cond, x = torch.randn(1, 8, 24, generator=g), torch.randn(1, 8, 8, generator=g), torch.randn(1, H * W, 8, generator=g)
    t = torch.tensor([600.0])
    shapes = [(1, 2, 4), (1, H, W)]
    mask = torch.cat([slots[None], torch.ones(1, H * W // 4, dtype=torch.bool)], 1)
    want = _ref(ref, torch.cat([cond, x], 1), ctx, t, shapes, mask)
    kv = QwenImage21KVCache(2)
    with torch.no_grad():
        for mode in ("extract", "cached"):
            out = ref(hidden_states=torch.cat([cond, x], 1), encoder_hidden_states=ctx, timestep=t / 1000,
                      img_shapes=[shapes], img_mask=mask, kv_cache=kv, kv_cache_mode=mode, return_dict=False)[0]
            assert (out[:, -H * W:] - want).abs().max() < 1e-4 * want.abs().max()
        got = ours(x, t, Prompt21(ctx, slots, cond, ((1, 2, 4),)), (H, W))
    assert (got - want).abs().max() < 1e-4 * want.abs().max()


def test_kept_prefix_equals_a_fresh_one_and_is_made_once(pair):
    _, ours = pair
    g = torch.Generator().manual_seed(4)
    prompt = Prompt21(torch.randn(1, 5, 24, generator=g))
    x = torch.randn(1, H * W, 8, generator=g)
    with torch.no_grad():
        fresh = [ours(x, torch.tensor([t]), prompt, (H, W)) for t in (900.0, 100.0)]
        ours.context_cache = ContextKVCache()
        try:
            kept = [ours(x, torch.tensor([t]), prompt, (H, W)) for t in (900.0, 100.0)]
            assert ours.context_cache.misses == 1 and ours.context_cache.hits == 1
        finally:
            ours.context_cache = None
    for a, b in zip(fresh, kept):
        assert torch.equal(a, b)
    assert (fresh[0] - fresh[1]).abs().max() > 1e-3  # the step matters for the target tokens


def test_layout_helpers():
    # text 2, image 2x2 (4 tokens), text 1, target 2x2
    flags = [False, False, True, True, True, True, False, True, True, True, True]
    pos = joint_positions(flags, [(1, 2, 2), (1, 2, 2)])
    assert pos[0].tolist() == [0, 1, 2, 2, 2, 2, 4, 5, 5, 5, 5]
    assert pos[1].tolist() == [0, 1, -1, -1, 0, 0, 4, -1, -1, 0, 0]
    assert pos[2].tolist() == [0, 1, -1, 0, -1, 0, 4, -1, 0, -1, 0]
    assert prefix_segments(flags, [(1, 2, 2), (1, 2, 2)], 7) == [(0, 2, True), (2, 6, False), (6, 7, True)]


def test_bad_inputs_and_configs(pair):
    _, ours = pair
    with pytest.raises(InputError, match="x must be"):
        ours(torch.zeros(1, 5, 8), torch.zeros(1), Prompt21(torch.zeros(1, 3, 24)), (H, W))
    with pytest.raises(InputError, match="image slots"):
        ours(torch.zeros(1, H * W, 8), torch.zeros(1), Prompt21(torch.zeros(1, 3, 24), torch.tensor([0, 1, 0]).bool()),
             (H, W))
    with pytest.raises(CheckpointError, match="patch_size"):
        QwenImage21DiTConfig.from_diffusers({**CFG, "patch_size": 2})
    with pytest.raises(CheckpointError, match="unknown field 'zero_cond_t'"):
        QwenImage21DiTConfig.from_diffusers({**CFG, "zero_cond_t": True})
