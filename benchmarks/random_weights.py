"""Random weights for the benchmark scripts, drawn on the device (timing does not depend on them).

Scaled so that activations stay finite through 40 blocks: biases small, norm gains near 1,
modulations ~1/sqrt(dim), other weights ~1/sqrt(fan_in). `python benchmarks/<script>.py` puts this
folder on sys.path, so the scripts import it as `random_weights`.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def fill_random_(module: torch.nn.Module, device: str | torch.device, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter of `module` (already on `device`) in place; returns it."""
    g = torch.Generator(device).manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim == 1 and ("bias" in name or name.endswith(".b")):
            p.normal_(0, 0.02, generator=g)
        elif p.ndim == 1 or "norm" in name or "gamma" in name:
            p.normal_(1.0, 0.05, generator=g)
        elif "modulation" in name:
            p.normal_(0, p.shape[-1] ** -0.5, generator=g)
        else:
            p.normal_(0, max(1, p[0].numel()) ** -0.5, generator=g)
    return module
