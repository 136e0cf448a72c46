"""Qwen-Image (text-to-image; editing to come): the MMDiT (dit.py), the VAE (vae.py: the Wan2.1 network),
the Qwen2.5-VL text encoder as the reference uses it (text.py), the dynamic-shift schedule (schedule.py),
and the family's declaration (layouts.py, spec.py, manifest.py); registered in lightx2v.models.registry."""
