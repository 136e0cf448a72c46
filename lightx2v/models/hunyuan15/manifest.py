"""HunyuanVideo-1.5's manifest: what the CLI offers for it (--task) without importing torch.

The family itself is declared in `spec.py` (imported on first use; lightx2v.models.registry checks
that it says the same)."""

from __future__ import annotations

from lightx2v.models.registry import FamilyManifest

MANIFEST = FamilyManifest(
    name="hunyuanvideo-1.5",
    title="HunyuanVideo-1.5",
    tasks=("t2v", "i2v"),
    presets=("hunyuanvideo-1.5-t2v-480p-distill",),
    spec="lightx2v.models.hunyuan15.spec",
)
