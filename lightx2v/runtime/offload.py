"""Model offload: a pipeline's DiTs kept in (pinned) host memory, only the one about to run on the device.

`apply_offload(pipeline, device, OffloadConfig("model"))` is the engine's placement step for the
DiTs (lightx2v.runtime.engine): every other component goes to the device as usual. Each DiT's
weights (parameters and buffers, quantized ones included) stay in host memory, pinned on CUDA so
copies run asynchronously; a forward pre-hook brings a DiT onto the device when it is called and
sends the DiT that was there back (its host copy is kept, so sending back only drops the device
tensors: the weights never change at run time: LoRA merges and quantization come before this step
in the engine's order, dynamic LoRAs are hooks).

Two-expert models (Wan2.2 A14B) switch DiT once per run. `prefetch(name)` starts copying a DiT
onto the device on a side stream, and its first call waits only for what is still in flight: the
pipeline calls it one step before the switch (the loop's `after_step` hook), so the copy of the
low-noise expert overlaps the last high-noise step. During that one step both experts are on the
device; `prefetch=False` keeps one DiT on the device at every moment (the switch then waits for
the whole copy: ~28 GB of bf16 14B weights take about 1 s over PCIe 5 at ~25 GB/s measured rates).

Block and phase granularity (a 14B model on an 8 GB card) build on the same host copies and
streams; this module is the model granularity. The same class keeps the encoders and the VAE in host
memory with `offload_encoders` (`apply_encoder_offload`): without forward hooks, placed by the
pipeline for the stage that uses each (`placed`), and sent back when the stage ends.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn


class ModelOffload:
    """Keeps `models` (name -> DiT) in host memory and the one being run on `device`."""

    def __init__(self, models: dict[str, nn.Module], device: torch.device, prefetch: bool = True,
                 hooks: bool = True) -> None:
        self.device = device
        self.models = models
        self.use_prefetch = prefetch and device.type == "cuda"
        self.resident: Optional[str] = None
        self.moves = 0                       # DiTs brought onto the device (a count for tests and stats)
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._pending: dict[str, tuple[dict, torch.cuda.Event]] = {}
        self._host: dict[str, dict[str, torch.Tensor]] = {}
        for name, model in models.items():
            host = {}
            for key, t in _tensors(model):
                cpu = t.detach().to("cpu")
                host[key] = cpu.pin_memory() if device.type == "cuda" else cpu
            self._host[name] = host
            self._assign(model, host)
            if hooks:  # a DiT comes onto the device when called; encoders are placed by `placed` instead
                model.register_forward_pre_hook(lambda module, args, name=name: self.activate(name))

    # -- moving ---------------------------------------------------------------------------------
    def activate(self, name: str) -> None:
        """DiT `name` on the device (waiting for its prefetch if one is in flight), every other DiT off."""
        if self.resident == name:
            return
        for other in list(self.models):
            if other != name and (other == self.resident or other in self._pending):
                self._evict(other)
        pending = self._pending.pop(name, None)
        if pending is not None:
            tensors, ready = pending
            torch.cuda.current_stream(self.device).wait_event(ready)
        else:
            tensors = {k: v.to(self.device, non_blocking=True) for k, v in self._host[name].items()}
        self._assign(self.models[name], tensors)
        self.resident = name
        self.moves += 1

    def prefetch(self, name: str) -> None:
        """Start copying DiT `name` onto the device on a side stream (no-op on the CPU, when it is
        already there or on its way, or when prefetch is off)."""
        if not self.use_prefetch or name == self.resident or name in self._pending:
            return
        main = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            tensors = {k: v.to(self.device, non_blocking=True) for k, v in self._host[name].items()}
            for t in tensors.values():
                t.record_stream(main)  # the main stream will use them: keep their memory until it has
            ready = torch.cuda.Event()
            ready.record(self._stream)
        self._pending[name] = (tensors, ready)

    def offload_all(self) -> None:
        """Every DiT back in host memory (after a run, or before something else needs the device)."""
        for name in list(self.models):
            self._evict(name)

    def bring(self, name: str) -> None:
        """Model `name` onto the device beside the ones there (a stage that needs two: the VAE and
        CLIP for an image); `activate` would send the others back."""
        self._assign(self.models[name], {k: v.to(self.device, non_blocking=True) for k, v in self._host[name].items()})
        self.moves += 1

    def release(self, name: str) -> None:
        """Model `name` back in host memory (its device tensors dropped)."""
        self._evict(name)

    def _evict(self, name: str) -> None:
        self._pending.pop(name, None)
        self._assign(self.models[name], self._host[name])
        if self.resident == name:
            self.resident = None

    @staticmethod
    def _assign(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        for key, t in _tensors(model):
            t.data = tensors[key]

    def on_device(self) -> list[str]:
        """The DiTs whose weights are on the device now."""
        return [n for n, m in self.models.items() if any(t.device.type == self.device.type for _, t in _tensors(m))]


def _tensors(model: nn.Module):
    yield from model.named_parameters()
    yield from ((k, b) for k, b in model.named_buffers() if b is not None)


# every family's encoders and VAEs by their component names (HunyuanVideo-1.5: byT5 as text_encoder_2,
# SigLIP as image_encoder); a pipeline places each for its stage with `placed`
ENCODER_COMPONENTS = ("text_encoder", "text_encoder_2", "clip", "image_encoder", "vae", "tiny_vae")


def apply_encoder_offload(pipeline, device: torch.device, names=ENCODER_COMPONENTS) -> ModelOffload:
    """The pipeline's encoders and VAEs (those it has) kept in host memory, stored as
    `pipeline.encoder_offload`: the pipeline places one on the device for its stage
    (`Pipeline.placed(name)`) and sends it back after, so they never sit beside the DiT."""
    models = {n: pipeline.components[n] for n in names if pipeline.components.get(n) is not None}
    pipeline.encoder_offload = ModelOffload(models, device, prefetch=False, hooks=False)
    return pipeline.encoder_offload


@contextmanager
def placed(pipeline, *names: str):
    """Within the block, the pipeline's components `names` are on the device when encoder offload keeps
    them in host memory (`pipeline.encoder_offload`); after it they go back. No-op without it. Block-
    offloaded DiTs are parked meanwhile (lightx2v.runtime.block_offload.BlockOffloads.park). Components
    named in `pipeline.release_pages` (the CPU text encoder under lazy load) have their file pages
    unmapped after the block (`release_mapped_pages`)."""
    release = {n: m for n, m in getattr(pipeline, "release_pages", {}).items() if n in names}
    off = getattr(pipeline, "encoder_offload", None)
    names = tuple(n for n in names if off is not None and n in off.models)
    park = getattr(getattr(pipeline, "offload", None), "park", None)
    if names and park is not None:  # block-offloaded DiTs leave the device to the encoder (back at their forward)
        park()
    for n in names:
        off.activate(n) if len(names) == 1 else off.bring(n)
    try:
        yield
    finally:
        for n in names:
            off.release(n)
        for n, mapped in release.items():
            release_mapped_pages(pipeline.components.get(n), mapped)


def mapped_weights(module) -> dict[int, int]:
    """The weights of `module` that are views of a mapped file, as {data_ptr: version counter now}."""
    from lightx2v.runtime.lazy_load import file_backed_mask

    tensors = [t for t in list(module.parameters()) + list(module.buffers()) if t.device.type == "cpu"]
    mask = file_backed_mask(tensors) or [False] * len(tensors)
    return {t.data_ptr(): t._version for t, mapped in zip(tensors, mask) if mapped}


def release_mapped_pages(module, mapped: dict[int, int]) -> int:
    """Unmap the file pages of `module`'s weights from the process (they stay in the page cache and are
    read again at the next use): a component that runs on the CPU from its memory-mapped checkpoint
    (the text encoder with `text_encoder_device="cpu"`) then does not keep the whole file resident
    between its uses. Only the tensors `mapped_weights` found, still there and never written in place
    since (their version counter unchanged); returns the bytes released."""
    from lightx2v.runtime.lazy_load import drop_pages

    if module is None:
        return 0
    tensors = list(module.parameters()) + list(module.buffers())
    return drop_pages([t for t in tensors if mapped.get(t.data_ptr()) == t._version])


def apply_offload(pipeline, device: torch.device, prefetch: bool = True) -> ModelOffload:
    """The pipeline's DiTs (`transformer_names`) under one ModelOffload, stored as `pipeline.offload`."""
    models = {n: pipeline.components[n] for n in pipeline.transformer_names if pipeline.components.get(n) is not None}
    pipeline.offload = ModelOffload(models, device, prefetch=prefetch)
    return pipeline.offload
