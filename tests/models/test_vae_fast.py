"""The VAE's fast paths against the default decode (tiny random VAEs, CPU): the chunked decode,
the channels-last decoder, the regional compile of the decoder's blocks; and the default fp32
decode against a copy of the pre-optimisation causal convolution (F.pad + cat, as the reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightx2v.config import CompileConfig
from lightx2v.models.wan import vae_blocks
from lightx2v.models.wan.tiny import randomize_
from lightx2v.models.wan.vae import WanVAE, tiny_vae_config
from lightx2v.models.wan.vae22 import Wan22VAE, tiny_vae22_config


def _vae(kind: str):
    if kind == "wan2.1":
        return randomize_(WanVAE(tiny_vae_config()), seed=0).eval(), torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    return randomize_(Wan22VAE(tiny_vae22_config()), seed=0).eval(), torch.randn(1, 48, 3, 2, 2, generator=torch.Generator().manual_seed(1))


def _reference_conv_after(self, x, prev):
    """The causal conv before the copies were removed: cat the history, F.pad time and space."""
    pt, ph, pw = self._time_pad // 2, self.padding[1], self.padding[2]
    pad = [pw, pw, ph, ph, 2 * pt, 0]
    if prev is not None and pad[4] > 0:
        x = torch.cat([prev, x], dim=2)
        pad[4] -= prev.shape[2]
    return F.conv3d(F.pad(x, pad), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


@pytest.mark.parametrize("kind", ["wan2.1", "wan2.2"])
def test_decode_equals_the_reference_convolution_and_its_chunks(kind, monkeypatch):
    vae, z = _vae(kind)
    fast = vae.decode(z)
    chunks = list(vae.decode_chunks(z))
    assert [c.shape[2] for c in chunks] == [1, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=2), fast)
    monkeypatch.setattr(vae_blocks.CausalConv3d, "conv_after", _reference_conv_after)
    torch.testing.assert_close(vae.decode(z), fast, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["wan2.1", "wan2.2"])
def test_channels_last_decoder_matches_the_default(kind):
    vae, z = _vae(kind)
    ref = vae.decode(z)
    vae.set_memory_format(True)
    assert vae.channels_last and vae.decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(vae.decode(z), ref, rtol=0, atol=1e-5)
    assert vae.to(torch.float64).decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)  # .to keeps it
    vae.to(torch.float32).set_memory_format(False)
    assert not vae.channels_last and vae.decoder.conv1.weight.is_contiguous()
    assert torch.equal(vae.decode(z), ref)


@pytest.mark.parametrize("kind", ["wan2.1"])  # Wan2.2's stages: the same blocks, named in its _repeated_blocks
def test_the_decoders_blocks_compile_by_region(kind):
    """Every declared block compiled in place; traced by dynamo (backend "eager": the suite stays fast; inductor on the GPU: benchmarks/vae_save.py)."""
    from lightx2v.runtime.vae_compile import compile_vae

    vae, z = _vae(kind)
    ref = vae.decode(z)
    torch._dynamo.reset()
    n = compile_vae(vae, CompileConfig(enabled=True, vae=True, backend="eager"))
    blocks = [b for name in vae._repeated_blocks for b in vae.get_submodule(name)]
    assert n == len(blocks) > 0 and all(b._compiled_call_impl is not None for b in blocks)
    assert all(not k.startswith("decoder.") or "_orig_mod" not in k for k in vae.state_dict())  # names unchanged
    torch.testing.assert_close(vae.decode(z), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(vae.decode(z), ref, rtol=0, atol=1e-5)  # the second call reuses the graphs
