"""Block / phase offload through the public API (LightX2V.from_pretrained + generate): the same video as
resident, with LoRAs, quantization, compile, two experts, lazy loading from the checkpoint's files, the
encoders' placement. The offload machinery itself is tested in test_block_offload.py."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lightx2v import LightX2V
from lightx2v.config import CompileConfig
from tests.runtime.test_block_offload import _assert_back_on_host, _inputs, cuda

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


