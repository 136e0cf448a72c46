"""Dynamic LoRA: LoRAs applied at run time, switched between generations without reloading.

Design: `apply_dynamic_lora(model, loras)` returns a `LoraSet`, the state object of the
transform. The base weights of Linear and Conv layers (quantized ones included) are never
touched: each targeted layer gets a forward hook that adds, in the activation dtype,
    y += x @ (sum_i c_i * up_i @ down_i)^T  computed as  (x @ D^T) @ U^T
with the pairs of all active LoRAs concatenated along the rank (D = [down_1; down_2 ...],
U = [c_1 up_1, c_2 up_2 ...], c = strength * scale), plus full weight deltas (`.diff`) and bias
deltas. Hooks keep the model's modules and `state_dict()` names unchanged. Small tensors that
are not read through a matmul (norm gains, modulation tables, position embeddings) cannot be
reached from a layer's output: they are patched in place, from a copy saved at the first patch,
and restored bit-exactly by `reset()`.

`set()` validates the new LoRAs completely before it changes anything, so a failed switch
leaves the previous set active. `reset()` removes every LoRA (the exact base output again);
`remove()` also detaches the transform for good.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightx2v.loading.lora import LoraWeights, is_quantized, report_unmatched, resolve_target, target_shapes

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _hookable(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.groups == 1 and module.padding_mode == "zeros" and not module.transposed
    return isinstance(module, nn.Linear) or is_quantized(module)


class _LoraHook:
    """Forward hook of one Linear / Conv layer: output + the LoRA terms of its input."""

    def __init__(self, module: nn.Module, down: Tensor | None, up: Tensor | None, weight_delta: Tensor | None,
                 bias_delta: Tensor | None) -> None:
        # down: [R, in] (conv: [R, in, *k]); up: [out, R] with the coefficients folded in
        self.conv = _CONV[module.weight.ndim - 2] if isinstance(module, nn.modules.conv._ConvNd) else None
        if self.conv is not None:
            self.conv_args = dict(stride=module.stride, padding=module.padding, dilation=module.dilation)
            kernel = tuple(module.weight.shape[1:])
            down = None if down is None else down.reshape(down.shape[0], *kernel)
            up = None if up is None else up.reshape(*up.shape, *([1] * len(kernel[1:])))
        self.tensors = (down, up, weight_delta, bias_delta)
        self._cast: dict[tuple, tuple] = {}  # (device, dtype) -> tensors, built on first use

    def _on(self, x: Tensor) -> tuple:
        key = (x.device, x.dtype)
        if key not in self._cast:
            if len(self._cast) >= 2:
                self._cast.clear()
            self._cast[key] = tuple(None if t is None else t.to(x.device, x.dtype) for t in self.tensors)
        return self._cast[key]

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        x = args[0]  # the layer's input, already in its compute dtype
        down, up, wd, bd = self._on(x)
        delta = None
        if self.conv is not None:
            if down is not None:
                delta = self.conv(self.conv(x, down, None, **self.conv_args), up)
            if wd is not None:
                d = self.conv(x, wd, None, **self.conv_args)
                delta = d if delta is None else delta + d
            if bd is not None:
                b = bd.view(1, -1, *([1] * (x.ndim - 2)))
                delta = b if delta is None else delta + b
        else:
            if down is not None:
                delta = F.linear(F.linear(x, down), up)
            if wd is not None:
                d = F.linear(x, wd)
                delta = d if delta is None else delta + d
            if bd is not None:
                delta = bd if delta is None else delta + bd
        return output if delta is None else output + delta.to(output.dtype)


class LoraSet:
    """The LoRAs active on one model at run time (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._hooks: list[RemovableHandle] = []
        self._saved: dict[str, Tensor] = {}  # patched tensor name -> its base value
        self._active: tuple[tuple[LoraWeights, float], ...] = ()
        self._removed = False

    @property
    def active(self) -> tuple[tuple[LoraWeights, float], ...]:
        return self._active

    def set(self, loras: Sequence[tuple[LoraWeights, float]], *, allow_unmatched: bool = False) -> None:
        """Make exactly `loras` (each with its strength) active, replacing the previous set."""
        if self._removed:
            raise RuntimeError("this LoraSet was removed from its model; call apply_dynamic_lora again")
        loras = tuple((lw, float(s)) for lw, s in loras)
        report_unmatched(loras, allow_unmatched)
        hooked, patched = self._plan(loras)
        # every hook's tensors are built before the previous set is cleared: a failure here (out of
        # memory, a bad file) leaves the previous LoRAs active, as the docstring promises
        hooks = [(module, _LoraHook(module, *self._combine(module, parts))) for module, parts in hooked.items()]
        self._clear()
        for module, hook in hooks:
            self._hooks.append(module.register_forward_hook(hook))
        self._patch(patched)
        self._active = loras

    def reset(self) -> None:
        """Remove every LoRA: the model computes exactly its base output again."""
        self._clear()

    def remove(self) -> None:
        """Reset and detach the transform; the set cannot be used afterwards."""
        self._clear()
        self._removed = True

    def _plan(self, loras: tuple) -> tuple[dict, dict]:
        """Where each target goes: {module: [(lw, strength, attr, name)]} hooked, {name: [...]} patched."""
        hooked: dict[nn.Module, list] = {}
        patched: dict[str, list] = {}
        for lw, strength in loras:
            for name, shape in sorted(target_shapes(lw).items()):
                module, attr = resolve_target(self._model, name, shape)
                if attr in ("weight", "bias") and _hookable(module):
                    hooked.setdefault(module, []).append((lw, strength, attr, name))
                else:
                    patched.setdefault(name, []).append((lw, strength, module, attr))
        return hooked, patched

    @staticmethod
    @torch.no_grad()
    def _combine(module: nn.Module, parts: list) -> tuple:
        """(down [R, in], up [out, R], weight delta, bias delta) of all LoRAs on one layer, float32."""
        downs, ups, wd, bd = [], [], None, None
        for lw, strength, attr, name in parts:
            if attr == "weight" and name in lw.low_rank:
                pair = lw.low_rank[name]
                downs.append(pair.down.float())
                ups.append(pair.up.float() * (strength * pair.scale))
            if name in lw.diffs:
                d = lw.diffs[name].float() * strength
                if attr == "weight":
                    wd = d if wd is None else wd + d
                else:
                    bd = d if bd is None else bd + d
        device = next(t.device for t in (*module.parameters(), torch.empty(0)))
        down = torch.cat(downs).to(device) if downs else None
        up = torch.cat(ups, dim=1).to(device) if ups else None
        return down, up, None if wd is None else wd.to(device), None if bd is None else bd.to(device)

    @torch.no_grad()
    def _patch(self, patched: dict) -> None:
        for name, parts in patched.items():
            module, attr = parts[0][2], parts[0][3]
            t = getattr(module, attr)
            self._saved[name] = t.detach().clone()
            acc = t.detach().to(torch.float32, copy=True)
            for lw, strength, _, _ in parts:
                acc.add_(lw.delta(name, acc.device), alpha=strength)
            t.copy_(acc)

    @torch.no_grad()
    def _clear(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for name, base in self._saved.items():
            parent, _, attr = name.rpartition(".")
            getattr(self._model.get_submodule(parent), attr).copy_(base)
        self._saved.clear()
        self._active = ()


def apply_dynamic_lora(
    model: nn.Module, loras: Sequence[tuple[LoraWeights, float]] = (), *, allow_unmatched: bool = False
) -> LoraSet:
    """Attach a `LoraSet` to `model` with `loras` (LoraWeights, strength) active."""
    lora_set = LoraSet(model)
    lora_set.set(loras, allow_unmatched=allow_unmatched)
    return lora_set


class LoraSets(dict):
    """The dynamic LoRA set of every DiT of a pipeline (`pipeline.lora_sets`): DiT name -> LoraSet
    (Wan2.2 A14B: "dit", the high-noise expert, and "dit_2", the low-noise one)."""

    @property
    def active(self) -> dict[str, tuple[tuple[LoraWeights, float], ...]]:
        """DiT name -> its active (LoraWeights, strength) pairs, for the DiTs that have any."""
        return {name: s.active for name, s in self.items() if s.active}

    def reset(self) -> None:
        """Remove every dynamic LoRA from every DiT (the exact base outputs again)."""
        for s in self.values():
            s.reset()
