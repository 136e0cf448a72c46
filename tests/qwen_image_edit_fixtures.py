"""A tiny random Qwen-Image edit folder in the released layout, for the server and UI tests.

`write_qwen_image_edit(root, plus=False)` -> the folder: diffusers' QwenImageEditPipeline (or, plus=True,
QwenImageEditPlusPipeline with the 2511 `zero_cond_t` DiT) `save_pretrained` of the same tiny components as
tests/qwen_image_fixtures.py (2-block MMDiT, base_dim-8 VAE, a Qwen2.5-VL of a few thousand parameters
with its vision tower), plus processor/ as the releases ship it (preprocessor_config.json + tokenizer).
No reference pipeline is returned: the parity tests are tests/pipelines/test_qwen_image_edit.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.qwen_image_fixtures import DIT, SCHEDULER, VAE, randomize


def write_qwen_image_edit(root: Path, plus: bool = False) -> Path:
    from diffusers import (
        AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline, QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from lightx2v.models.qwen_image.tiny import build_tiny_tokenizer, tiny_image_processor_config, tiny_text_config

    torch.manual_seed(0)
    dit = QwenImageTransformer2DModel(**DIT, **({"zero_cond_t": True} if plus else {})).eval()
    randomize(dit, 0.3, 1)
    vae = AutoencoderKLQwenImage(**VAE).eval()
    randomize(vae, 0.2, 2)
    te = Qwen2_5_VLForConditionalGeneration(tiny_text_config()).eval()
    randomize(te, 0.2, 3)
    build_tiny_tokenizer(root / "_tok")
    tok = AutoTokenizer.from_pretrained(str(root / "_tok"))
    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    folder = root / ("edit-plus" if plus else "edit")
    cls(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=te, tokenizer=tok,
        processor=None, transformer=dit).save_pretrained(str(folder))
    index = json.loads((folder / "model_index.json").read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index))
    tok.save_pretrained(str(folder / "processor"))
    (folder / "processor" / "preprocessor_config.json").write_text(json.dumps(tiny_image_processor_config()))
    return folder
