"""Wan2.1's manifest: what the CLI offers for it (--task, --preset) without importing torch.

The family itself is declared in `spec.py` (imported on first use); it registers with the same
name, title, tasks and presets, which the registry checks (lightx2v.models.registry).
"""

from __future__ import annotations

from lightx2v.models.registry import FamilyManifest

MANIFEST = FamilyManifest(
    name="wan2.1",
    title="Wan2.1",
    tasks=("t2v", "i2v", "flf2v"),
    presets=("wan2.1-t2v-14b-distill", "wan2.1-i2v-480p-distill", "wan2.1-i2v-720p-distill"),
    spec="lightx2v.models.wan.spec",
)
