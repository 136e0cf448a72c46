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
from safetensors.torch import save_file

from lightx2v import LightX2V
from lightx2v.config import CompileConfig, EngineConfig, OffloadConfig
from lightx2v.errors import InputError
from lightx2v.models.wan.dit import WanModel
from lightx2v.models.wan.tiny import randomize_, tiny_dit_config
from lightx2v.quant import QuantLinear, apply_quant
from lightx2v.runtime.block_offload import apply_block_offload
from lightx2v.runtime.context_kv import ContextKVCache

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
    assert all(torch.equal(a, b) for a, b in zip(_generations(model, batch=2), _generations(resident, batch=2)))


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


def test_lazy_load_through_the_api_keeps_the_blocks_mapped(tiny_official_dir, recwarn):
    from lightx2v.runtime.lazy_load import file_backed

    pipe = _load(tiny_official_dir, offload="block", lazy_load=True, num_disk_workers=1)
    assert not [w for w in recwarn if "lazy_load" in str(w.message)]  # a float32 file, run in float32
    off = pipe.pipeline.offload.offloads["dit"]
    tensors = [t for row in off.units for u in row for t in u.tensors]
    assert file_backed(tensors) == len(tensors)
    assert any("offload (block, lazy load): dit: 2 blocks read from their files by 1 workers through 2 host "
               "buffers" in line for line in pipe.pipeline.engine_log)
    assert torch.equal(_gen(pipe), _ref(tiny_official_dir))
    assert file_backed(tensors) == len(tensors)  # still the file's pages after running
    # each unit's pages were unmapped after its read (drop_pages), and read again from the file next time
    assert off.reader.droppable and all(len(v) == len(u.tensors) for row in off.units for u in row
                                        for k, v in off.reader.droppable.items() if k == u.key)
    assert torch.equal(_gen(pipe), _ref(tiny_official_dir))
    # bf16 from a float32 file: cast while loading (the 14 tensors kept in float32 stay mapped)
    with pytest.warns(UserWarning, match="lazy_load: 40 of the dit's 54 block tensors are not mapped"):
        LightX2V.from_pretrained(tiny_official_dir, device="cpu", dtype=torch.bfloat16, progress=False,
                                 offload="phase", lazy_load=True)


def test_lazy_load_drops_the_mapped_tensors_of_a_unit_that_also_holds_loaded_ones(tiny_official_dir, monkeypatch):
    """A bf16 run from a bf16 file keeps some block params in float32 (made by the loader, not the
    file's): a unit mixing both still has its mapped tensors' pages unmapped after each read (on the
    H200 the whole 14B DiT stayed resident in host memory when one such tensor blocked its unit)."""
    import lightx2v.runtime.lazy_load as lazy_load

    pipe = _load(tiny_official_dir, offload="block", lazy_load=True, num_disk_workers=1)
    off = pipe.pipeline.offload.offloads["dit"]
    unit = off.units[0][0]
    loaded = unit.host_views[-1].clone()  # as if the loader had cast it: anonymous memory, never to be dropped
    unit.host_views = list(unit.host_views[:-1]) + [loaded]
    unit.tensors[-1].data = loaded
    dropped: list = []
    monkeypatch.setattr(lazy_load, "drop_pages", lambda ts: dropped.append([t.data_ptr() for t in ts]) or 0)
    off.reader.droppable.clear()
    off.reader._read(unit, 0)
    assert off.reader.droppable[unit.key] == list(range(len(unit.tensors) - 1))
    assert dropped == [[t.data_ptr() for t in unit.host_views[:-1]]]


def test_drop_pages_keeps_the_data_of_a_mapped_file(tmp_path):
    from safetensors.torch import load_file, save_file

    from lightx2v.runtime.lazy_load import drop_pages, file_backed

    values = torch.randn(64, 1024)  # 256 KB: whole pages inside
    save_file({"w": values}, str(tmp_path / "w.safetensors"))
    mapped = load_file(str(tmp_path / "w.safetensors"))["w"]
    assert file_backed([mapped]) == 1 and torch.equal(mapped, values)
    assert drop_pages([mapped]) >= 256 * 1024 - 2 * 4096 * 4  # only whole pages inside the tensor
    assert torch.equal(mapped, values)  # read again from the file


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

PROMPT = "a fox in the snow"
_REFS: dict = {}


def _load(root, **kw):
    return LightX2V.from_pretrained(root, device="cpu", dtype=torch.float32, progress=False, **kw)


def _gen(pipe, seed=3, **kw):
    kw = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 3, "guidance_scale": 3.0,
          "output_type": "latent", **kw}
    out = pipe.generate(prompt=PROMPT, seed=seed, **kw)
    return torch.as_tensor(out.frames) if kw["output_type"] == "np" else out.latents


def _ref(root, gen=(), **load):
    """The resident pipeline's output (computed once per module for each load / generate setting)."""
    key = (str(root), repr(sorted(load.items())), gen)
    if key not in _REFS:
        _REFS[key] = _gen(_load(root, **load), **dict(gen))
    return _REFS[key]


@pytest.mark.parametrize("granularity", ["block", "phase"])
def test_public_api_same_video(tiny_official_dir, granularity):
    pipe = _load(tiny_official_dir, offload=granularity, fuse_qkv=True)
    log = pipe.pipeline.engine_log
    assert any(line.startswith(f"placement: cpu; offload ({granularity}): dit: 2 blocks in host memory, "
                               f"2 device buffers of") for line in log)
    assert f"fuse_qkv: dit: skipped (offload {granularity} moves the weights)" in log
    assert torch.equal(_gen(pipe, output_type="np"), _ref(tiny_official_dir, gen=(("output_type", "np"),)))
    _assert_back_on_host(pipe.pipeline.offload.offloads["dit"])


def test_batched_cfg(tiny_official_dir):
    out = _gen(_load(tiny_official_dir, cfg_mode="batched", offload="phase"))
    assert torch.equal(out, _ref(tiny_official_dir, cfg_mode="batched"))


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    """A LoRA on linears (hooked when dynamic) and on a modulation table and a norm gain (patched in place)."""
    path = tmp_path_factory.mktemp("lora") / "l.safetensors"
    g = torch.Generator().manual_seed(5)
    sd = {}
    for name, (o, i) in {"blocks.0.self_attn.q": (64, 64), "blocks.1.cross_attn.k": (64, 64),
                         "blocks.1.ffn.0": (128, 64)}.items():
        sd[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(4, i, generator=g) / i**0.5
        sd[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(o, 4, generator=g) * 0.5
    sd["diffusion_model.blocks.1.modulation.diff"] = 0.1 * torch.randn(1, 6, 64, generator=g)
    sd["diffusion_model.blocks.0.norm3.diff"] = 0.1 * torch.randn(64, generator=g)
    save_file(sd, str(path))
    return path


@pytest.mark.parametrize("mode, granularity", [("merge", "phase"), ("dynamic", "phase"), ("dynamic", "block")])
def test_loras_merged_and_dynamic(tiny_official_dir, lora_file, mode, granularity):
    """Dynamic: the LoRA switched off and on between generations. The tensors it patches in place are
    patched in the host copies; a unit still in a buffer from the last call (here: every block, 2
    blocks in 2 buffers) is copied again because its tensors' version counters moved."""
    lora = [(lora_file, 0.8)]
    ref = _ref(tiny_official_dir, lora=lora, lora_mode="merge")  # merged and dynamic give the same here
    base = _ref(tiny_official_dir)
    pipe = _load(tiny_official_dir, lora=lora, lora_mode=mode, offload=granularity)
    out = _gen(pipe)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (out - base).abs().max() > 1e-3
    if mode == "dynamic":  # switched off and on again between generations: the host copies follow
        pipe.set_lora([])
        assert torch.equal(_gen(pipe), base)
        pipe.set_lora(lora)
        assert torch.equal(_gen(pipe), out)


def test_quantized_through_the_engine(tiny_official_dir):
    out = _gen(_load(tiny_official_dir, quant="w8a8-int8", offload="block"))
    assert torch.equal(out, _ref(tiny_official_dir, quant="w8a8-int8"))


def test_compiled_blocks_with_block_offload_do_not_recompile(tiny_official_dir):
    """The bookkeeping runs outside the compiled blocks: one graph, no recompile, no graph break,
    across steps, generations and CFG on / off; the numbers of the resident model (aot_eager)."""
    from torch._dynamo.utils import counters

    pipe = _load(tiny_official_dir, compile=CompileConfig(enabled=True, backend="aot_eager"), offload="block")
    counters.clear()
    out = _gen(pipe)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    _gen(pipe, seed=4, num_inference_steps=2)
    _gen(pipe, guidance_scale=1.0, num_inference_steps=2)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["recompiles"] and not counters["graph_break"]
    assert torch.equal(out, _ref(tiny_official_dir))


@pytest.mark.parametrize("granularity", ["block", "phase"])
def test_two_experts(wan22_t2v_dirs, granularity):
    root = wan22_t2v_dirs[0]
    kw = (("guidance_scale_2", 2.0), ("num_inference_steps", 4), ("height", 32), ("width", 48))
    pipe = _load(root, offload=granularity)
    offs = pipe.pipeline.offload
    assert set(offs.offloads) == {"dit", "dit_2"} and len(offs.pool.slots) == 2
    assert any(f"offload ({granularity}): dit, dit_2:" in line for line in pipe.pipeline.engine_log)
    assert torch.equal(_gen(pipe, **dict(kw)), _ref(root, gen=kw))
    assert torch.equal(_gen(pipe, **dict(kw)), _ref(root, gen=kw))  # a second generation
    for off in offs.offloads.values():
        _assert_back_on_host(off)


# ---------------------------------------------------------------- on a GPU (the streams, pinned memory)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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


@pytest.mark.gpu
@cuda
def test_cuda_public_api_with_inductor_compile(tiny_official_dir):
    from torch._dynamo.utils import counters

    kw = dict(device="cuda", dtype=torch.bfloat16, progress=False, compile=True)
    ref = _gen(LightX2V.from_pretrained(tiny_official_dir, **kw))
    torch._dynamo.reset()
    pipe = LightX2V.from_pretrained(tiny_official_dir, offload="block", **kw)
    counters.clear()
    out = _gen(pipe)
    _gen(pipe, seed=4)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["recompiles"] and not counters["graph_break"]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert pipe.pipeline.offload.pool.slots[0].data.is_cuda


@pytest.mark.parametrize("granularity", ["block", "phase"])
def test_parked_while_the_encoders_and_the_vae_run(tiny_official_dir, granularity, monkeypatch):
    """With encoder offload the DiT's buffers are freed and its rest sent to the host while the text
    encoder and the VAE have the device; its next forward brings them back. Same video, two generations."""
    from lightx2v.runtime.offload import ModelOffload

    ref = _ref(tiny_official_dir, gen=(("output_type", "np"),))
    pipe = _load(tiny_official_dir, offload=granularity, offload_encoders=True)
    offs = pipe.pipeline.offload
    seen = []
    activate = ModelOffload.activate

    def spy(self, name):  # an encoder or the VAE comes onto the device: the DiT is parked by then
        seen.append((name, offs.parked, {s.data.numel() for s in offs.pool.slots}))
        return activate(self, name)

    monkeypatch.setattr(ModelOffload, "activate", spy)
    for _ in range(2):
        assert torch.equal(_gen(pipe, output_type="np"), ref)
    assert seen == [("text_encoder", True, {0}), ("vae", True, {0})] * 2  # the slots hold no memory then
    assert offs.parks == 3  # the first text encode, each decode (the second text encode found it parked)
    assert offs.parked and all(s.data.numel() == 0 for s in offs.pool.slots)
    dit = pipe.pipeline.components["dit"]
    x, ctx = _inputs(size=(2, 4, 4))
    with torch.no_grad():
        dit(x, torch.full((1,), 500.0), ctx)  # its forward unparks
    assert not offs.parked and all(s.data.numel() == offs.pool.nbytes for s in offs.pool.slots)


def test_a_cpu_text_encoder_under_lazy_load_has_its_file_pages_released_after_each_encode(tiny_official_dir, monkeypatch):
    """On the H200 (I2V-14B, max_ram 16 GiB) the CPU umt5's mapped file held 8.6 GiB resident through the
    denoise; under lazy load its pages are unmapped after the text stage (and read again next time)."""
    import lightx2v.runtime.lazy_load as lazy_load
    from lightx2v.runtime.lazy_load import file_backed

    released: list = []
    real = lazy_load.drop_pages
    monkeypatch.setattr(lazy_load, "drop_pages", lambda ts: released.append(list(ts)) or real(ts))
    pipe = _load(tiny_official_dir, offload="block", lazy_load=True, text_encoder_device="cpu")
    assert any(line.startswith("placement: text_encoder on cpu (its weights' file pages unmapped")
               for line in pipe.pipeline.engine_log)
    te = pipe.pipeline.components["text_encoder"]
    mapped = {t.data_ptr() for t in te.parameters()}
    assert file_backed(list(te.parameters())) == len(mapped)  # the tiny file's tensors are all mapped
    released.clear()
    assert torch.equal(_gen(pipe), _ref(tiny_official_dir))
    te_calls = [c for c in released if {t.data_ptr() for t in c} == mapped]
    assert len(te_calls) == 1  # once per generation, after the text stage, every mapped weight
    assert torch.equal(_gen(pipe), _ref(tiny_official_dir))  # the next encode reads them again
    # without lazy load the text encoder's pages are left alone
    plain = _load(tiny_official_dir, offload="block", text_encoder_device="cpu")
    assert not getattr(plain.pipeline, "release_pages", ())
