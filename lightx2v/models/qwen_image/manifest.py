"""Qwen-Image's manifest: what the CLI offers for it (--task) without importing torch.

The family itself is declared in `spec.py` (imported on first use; lightx2v.models.registry checks
that it says the same)."""

from __future__ import annotations

from lightx2v.models.registry import FamilyManifest

MANIFEST = FamilyManifest(
    name="qwen-image",
    title="Qwen-Image",
    tasks=("t2i", "edit"),
    presets=("qwen-image-lightning-4step", "qwen-image-lightning-8step"),
    spec="lightx2v.models.qwen_image.spec",
)
