"""`python -m tests.small_edit_areas ARGS...`: run the server module named by $SMALL_EDIT_RUN (lightx2v.server,
the default, or lightx2v.web.ui)
with Qwen-Image-Edit's image areas made small (the VAE's 1024 x 1024 -> 128 x 128, Edit-Plus' VL
384 x 384 -> 96 x 96), as tests/pipelines/test_qwen_image_edit.py does in-process: at the released areas a
tiny edit job takes ~10 s on a loaded 2-core CPU, here well under one. Tests only."""

import dataclasses
import os
import runpy

from lightx2v.pipelines import qwen_image_edit

# variant -> the EditVariant fields replaced (the same small areas as tests/pipelines/test_qwen_image_edit.py)
SMALL = {"edit": {"vae_area": 128 * 128}, "edit-plus": {"vae_area": 128 * 128, "condition_area": 96 * 96}}


def small_variants() -> dict:
    """qwen_image_edit.VARIANTS with the small areas (to set in-process with monkeypatch)."""
    return {k: dataclasses.replace(v, **SMALL.get(k, {})) for k, v in qwen_image_edit.VARIANTS.items()}


if __name__ == "__main__":
    qwen_image_edit.VARIANTS.update(small_variants())
    module = os.environ.get("SMALL_EDIT_RUN", "lightx2v.server")
    runpy.run_module(module, run_name="__main__", alter_sys=True)
