"""Block and phase offload (lightx2v.runtime.block_offload): the blocks in host memory, run through a
few reused buffers. On the CPU host and device are one memory, so these tests check the bookkeeping
(bit-identical outputs, slots allocated once, every unit computed from a slot, weights back on their
host copies, no slot refilled while in use); the stream overlap is measured on a GPU
(benchmarks/offload.py)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from lightx2v.config import EngineConfig, OffloadConfig
from lightx2v.errors import InputError
from lightx2v.models.wan.dit import WanModel
from lightx2v.models.wan.tiny import randomize_, tiny_dit_config
from lightx2v.quant import QuantLinear, apply_quant
from lightx2v.runtime.block_offload import apply_block_offload
from lightx2v.runtime.context_kv import ContextKVCache

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
LAYERS = 5  # more blocks than buffers: slots are refilled


class _Pipe:
    """What apply_block_offload reads of a pipeline."""

    def __init__(self, **dits):
        self.components = dict(dits)
        self.transformer_names = tuple(dits)


def _model(seed=0, layers=LAYERS, **cfg):
    torch.manual_seed(seed)
    return randomize_(WanModel(dataclasses.replace(tiny_dit_config(), num_layers=layers, **cfg)), seed).eval()


def _inputs(batch=1, seed=1, size=(2, 4, 6), text_dim=32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x, ctx = torch.randn(batch, 16, *size, generator=g), torch.randn(batch, 7, text_dim, generator=g)
    return x.to(device), ctx.to(device)


@torch.no_grad()
def _generations(model, steps=3, generations=2, batch=1, context_kv=True, **inputs):
    """Outputs of `steps` calls (timesteps going down) for `generations` generations of one context."""
    x, ctx = _inputs(batch, **inputs)
    outs = []
    for _ in range(generations):
        model.context_cache = ContextKVCache() if context_kv else None
        for t in torch.linspace(900, 100, steps):
            outs.append(model(x, t.repeat(batch).to(x.device), ctx))
    return outs


def _offloaded(model, granularity, num_buffers=2, prefetch=True, lazy=False):
    pipe = _Pipe(dit=model)
    if not lazy:
        return apply_block_offload(pipe, torch.device("cpu"), granularity, num_buffers, prefetch=prefetch)
    with pytest.warns(UserWarning, match="block tensors are not mapped from its files"):  # built in memory here
        return apply_block_offload(pipe, torch.device("cpu"), granularity, num_buffers, prefetch=prefetch,
                                   lazy_load=True, num_disk_workers=2)


def _assert_back_on_host(off):
    """Every block tensor points at its place in its block's host buffer; no slot is held."""
    for row in off.units:
        for unit in row:
            for t, v in zip(unit.tensors, unit.host_views):
                assert t.data_ptr() == v.data_ptr() and t.shape == v.shape
    assert not off._held and not any(s.busy for s in off.pool.slots)


def _slot_storages(pool):
    return {s.data.untyped_storage().data_ptr() for s in pool.slots}


# ---------------------------------------------------------------- the transform alone


@pytest.mark.parametrize("granularity", ["block", "phase"])
@pytest.mark.parametrize("context_kv", [True, False])
def test_bit_identical_over_steps_and_generations(granularity, context_kv):
    model, resident = _model(), _model()
    offs = _offloaded(model, granularity)
    off = offs.offloads["dit"]
    slots = [s.data.data_ptr() for s in offs.pool.slots]
    ref = _generations(resident, context_kv=context_kv)
    out = _generations(model, context_kv=context_kv)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    # the same two buffers all along (allocated once), refilled: more units than buffers
    assert [s.data.data_ptr() for s in offs.pool.slots] == slots and len(slots) == 2
    units = LAYERS * (1 if granularity == "block" else 3)
    assert offs.pool.copies >= 6 * units - 1
    _assert_back_on_host(off)
    # what is outside the blocks never moves; the state dict reads the host copies
    for k, v in resident.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize("granularity", ["block", "phase"])
def test_every_unit_computes_from_a_slot(granularity):
    """Hooks registered after the offload's see, for each module about to run inside a block (the
    cross-attention K/V projections included), its own tensors in a device buffer."""
    model = _model()
    offs = _offloaded(model, granularity)
    storages = _slot_storages(offs.pool)
    seen = []

    def check(module, args):
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        assert all(t.untyped_storage().data_ptr() in storages for t in own), type(module).__name__
        seen.append(module)

    for block in model.blocks:
        for module in block.modules():
            module.register_forward_pre_hook(check)
    filled_busy = []
    fill = offs.pool._fill
    offs.pool._fill = lambda slot, *a: (filled_busy.append(slot.busy), fill(slot, *a))[1]
    _generations(model, steps=2, generations=1)
    assert len({id(m) for m in seen}) >= 10 * LAYERS and not any(filled_busy)  # never refilled while in use
    k_calls = [m for m in seen if m is model.blocks[0].cross_attn.k]
    assert len(k_calls) == 1  # the K/V, made at the first step (then cached), from a slot too


def test_without_prefetch_each_unit_is_copied_when_needed():
    model, resident = _model(), _model()
    offs = _offloaded(model, "block", prefetch=False)
    assert all(torch.equal(a, b) for a, b in zip(_generations(model, 2, 1), _generations(resident, 2, 1)))
    assert offs.pool.copies == 2 * LAYERS


@pytest.mark.parametrize("granularity, lazy", [("block", False), ("phase", False), ("block", True)])
def test_in_place_writes_between_calls_are_seen(granularity, lazy):
    """A unit kept in a buffer from the last call (2 blocks, 2 buffers: all of them) is copied again
    when a tensor of it was written in place through its Parameter since (its version counter); a
    lazy load's read ahead likewise."""
    model, resident = _model(layers=2), _model(layers=2)
    offs = _offloaded(model, granularity, lazy=lazy)
    x, ctx = _inputs()
    with torch.no_grad():
        for step in range(3):
            t = torch.tensor([800.0 - 100 * step])
            assert torch.equal(model(x, t, ctx), resident(x, t, ctx))
            for m in (model, resident):
                m.blocks[step % 2].modulation.mul_(1.5)
                m.blocks[1].ffn[2].weight.add_(0.01)
    _assert_back_on_host(offs.offloads["dit"])


def test_more_buffers_copy_further_ahead():
    model, resident = _model(), _model()
    offs = _offloaded(model, "phase", num_buffers=4)
    assert len(offs.pool.slots) == 4
    assert all(torch.equal(a, b) for a, b in zip(_generations(model), _generations(resident)))


@pytest.mark.parametrize("scheme, granularity", [("w8a8-int8", "block"), ("w8a8-fp8", "phase")])
def test_quantized_weights_and_scales_are_offloaded(scheme, granularity):
    model, resident = (apply_quant(_model(), scheme, compute_dtype=torch.float32) for _ in range(2))
    offs = _offloaded(model, granularity)
    off = offs.offloads["dit"]
    dtypes = {t.dtype for row in off.units for u in row for t in u.tensors}
    assert {torch.int8 if "int8" in scheme else torch.float8_e4m3fn, torch.float32} <= dtypes
    assert all(torch.equal(a, b) for a, b in zip(_generations(model), _generations(resident)))
    _assert_back_on_host(off)
    assert isinstance(model.blocks[0].ffn[0], QuantLinear)


def test_batched_inputs():
    model, resident = _model(), _model()
    _offloaded(model, "phase")
    diffs = [float((a - b).abs().max()) for a, b in zip(_generations(model, batch=2), _generations(resident, batch=2))]
    assert diffs == [0.0] * len(diffs), f"max |offloaded - resident| per call: {diffs}"


def test_two_models_share_the_buffers():
    a, b, ra, rb = _model(0), _model(1), _model(0), _model(1)
    offs = apply_block_offload(_Pipe(dit=a, dit_2=b), torch.device("cpu"), "block", 2)
    assert offs.offloads["dit"].pool is offs.offloads["dit_2"].pool and len(offs.pool.slots) == 2
    x, ctx = _inputs()
    with torch.no_grad():
        for t in (900.0, 700.0):  # high-noise expert, then the low-noise one, as a switch does
            assert torch.equal(a(x, torch.tensor([t]), ctx), ra(x, torch.tensor([t]), ctx))
        for t in (500.0, 300.0):
            assert torch.equal(b(x, torch.tensor([t]), ctx), rb(x, torch.tensor([t]), ctx))
    _assert_back_on_host(offs.offloads["dit"])
    _assert_back_on_host(offs.offloads["dit_2"])


def test_model_declarations_are_read_not_guessed():
    class NoPhases(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

    class Stack(torch.nn.Module):
        _repeated_blocks = ("blocks",)

        def __init__(self, blocks):
            super().__init__()
            self.blocks = torch.nn.ModuleList(blocks)

    with pytest.raises(InputError, match="NoPhases declares no phases"):
        apply_block_offload(_Pipe(dit=Stack([NoPhases()])), torch.device("cpu"), "phase")
    with pytest.raises(InputError, match="declares no repeated blocks"):
        apply_block_offload(_Pipe(dit=torch.nn.Linear(2, 2)), torch.device("cpu"), "block")
    with pytest.raises(InputError, match="block 1 of Stack differs from block 0"):
        apply_block_offload(_Pipe(dit=Stack([torch.nn.Linear(2, 2), torch.nn.Linear(3, 2)])),
                            torch.device("cpu"), "block")


def test_a_tensor_outside_the_declared_phases_is_an_error():
    model = _model(layers=2)
    for block in model.blocks:
        block.extra = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(InputError, match=r"WanBlock.extra is in 0 of the declared offload phases"):
        _offloaded(model, "phase")


# ---------------------------------------------------------------- configuration and the engine


@pytest.mark.parametrize("granularity", ["block", "phase"])
def test_lazy_load_reads_the_blocks_through_a_small_ring(granularity):
    """No host copies: the blocks stay where the loader put them; 3 host buffers for 2 workers."""
    model, resident = _model(), _model()
    offs = _offloaded(model, granularity, lazy=True)
    off, reader = offs.offloads["dit"], offs.offloads["dit"].reader
    assert off.host_bytes() == 0 and len(reader.buffers) == 3 and reader.nbytes == offs.pool.nbytes
    assert all(torch.equal(a, b) for a, b in zip(_generations(model), _generations(resident)))
    units = LAYERS * (1 if granularity == "block" else 3)
    assert reader.reads >= 6 * units - 2 and len(reader.idle) + len(reader.pending) == 3
    _assert_back_on_host(off)


def test_config_and_errors():
    assert EngineConfig(device="cpu", offload="block").offload == OffloadConfig("block")
    assert EngineConfig(device="cpu", offload="phase").staging_device() == torch.device("cpu")
    with pytest.raises(InputError, match="offload must be one of model, block, phase"):
        EngineConfig(device="cpu", offload="blocks")
    with pytest.raises(InputError, match="offload_buffers must be an integer >= 2"):
        OffloadConfig("block", num_buffers=1)
    with pytest.raises(InputError, match="offload 'phase' cannot be combined with compile"):
        EngineConfig(device="cpu", offload="phase", compile=True)
    from lightx2v.api import make_engine

    assert make_engine(device="cpu", offload="phase", offload_buffers=3).offload.num_buffers == 3
    with pytest.raises(InputError, match="offload_buffers is for offload 'block' or 'phase'"):
        make_engine(device="cpu", offload="model", offload_buffers=3)
    with pytest.raises(InputError, match="lazy_load is for offload 'block' or 'phase', not None"):
        make_engine(device="cpu", lazy_load=True)
    with pytest.raises(InputError, match="lazy_load needs offload 'block' or 'phase'"):
        OffloadConfig("model", lazy_load=True)
    with pytest.raises(InputError, match="num_disk_workers must be an integer >= 1"):
        OffloadConfig("block", lazy_load=True, num_disk_workers=0)
    lazy = make_engine(device="cpu", offload="block", lazy_load=True).offload
    assert (lazy.lazy_load, lazy.num_disk_workers, lazy.num_buffers) == (True, 2, 2)


def test_cli_flags():
    import argparse

    from lightx2v.cli.generate import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--offload", "phase", "--offload-buffers", "3", "--lazy-load", "--num-disk-workers", "4"])
    assert (args.offload, args.offload_buffers, args.lazy_load, args.num_disk_workers) == ("phase", 3, True, 4)


def test_memory_estimate_counts_the_rest_and_the_buffers(tiny_official_dir):
    from lightx2v.loading.detect import detect
    from lightx2v.runtime.memory import weight_bytes

    mc = detect(tiny_official_dir)
    full = weight_bytes(mc, EngineConfig(device="cpu", dtype=torch.float32))
    block = weight_bytes(mc, EngineConfig(device="cpu", dtype=torch.float32, offload="block"))
    phase = weight_bytes(mc, EngineConfig(device="cpu", dtype=torch.float32, offload="phase"))
    with torch.device("meta"):
        dit = WanModel(mc.arch.dit)
    outside = sum(t.numel() * 4 for n, t in dit.named_parameters() if not n.startswith("blocks."))
    one_block = sum(t.numel() * 4 for t in dit.blocks[0].parameters())
    rest = {k: v for k, v in full.items() if k != "dit"}
    assert block == {"dit (offload block: outside the blocks)": outside,
                     "dit (offload block: 2 buffers for 2 blocks)": block["dit (offload block: 2 buffers for 2 blocks)"],
                     **rest}
    assert 2 * one_block <= block["dit (offload block: 2 buffers for 2 blocks)"] < 2 * one_block + 2 * 256 * 40
    assert sum(phase.values()) < sum(block.values()) <= sum(full.values())  # 2 buffers of the 2 blocks here


# ---------------------------------------------------------------- through the public API


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("granularity, buffers, lazy", [("block", 2, False), ("phase", 2, False), ("block", 3, False),
                                                        ("phase", 2, True)])
def test_cuda_same_numbers_blocks_pinned_on_the_host(granularity, buffers, lazy):
    """Wide enough that compute and copies overlap for real: a slot overwritten too early, or used
    before its copy landed (or a lazy load's host buffer refilled too early), would change the numbers."""
    wide = dict(dim=512, ffn_dim=2048, num_heads=4, text_dim=64)
    model, resident = _model(layers=8, **wide), _model(layers=8, **wide).cuda()
    if not lazy:
        model = model.cuda()  # (lazy: the blocks stay where they are, on the host)
    kw = dict(lazy_load=True, num_disk_workers=2) if lazy else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lazy: built in memory, not mapped from a file
        offs = apply_block_offload(_Pipe(dit=model), torch.device("cuda"), granularity, buffers, **kw)
    off = offs.offloads["dit"]
    assert all(t.device.type == "cpu" and t.is_pinned() != lazy for row in off.units for u in row for t in u.tensors)
    if lazy:
        assert all(b.is_pinned() for b in off.reader.buffers)
    assert model.patch_embedding.weight.is_cuda and model.head.head.weight.is_cuda
    inputs = dict(size=(5, 16, 24), text_dim=64, device="cuda")
    ref = _generations(resident, **inputs)
    out = _generations(model, **inputs)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    _assert_back_on_host(off)
