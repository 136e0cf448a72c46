"""Wan2.2's manifest: what the CLI offers for it (--task, --preset) without importing torch.

The family itself is declared in `spec.py` (imported on first use); it registers with the same
name, title, tasks and presets, which the registry checks (lightx2v.models.registry).
Tasks are the checkpoint kinds: t2v (T2V-A14B), i2v (I2V-A14B), ti2v (TI2V-5B: text-to-video, or
image-to-video with an image, from the one checkpoint).
"""

from __future__ import annotations

from lightx2v.models.registry import FamilyManifest

MANIFEST = FamilyManifest(
    name="wan2.2",
    title="Wan2.2",
    tasks=("t2v", "i2v", "ti2v"),
    presets=("wan2.2-t2v-a14b-distill", "wan2.2-i2v-a14b-distill", "wan2.2-i2v-a14b-720p-distill"),
    spec="lightx2v.models.wan22.spec",
)
