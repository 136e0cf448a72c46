"""Qwen-Image (text-to-image and editing). Step 1 of the family: the MMDiT only (dit.py); not
registered in lightx2v.models.registry until its VAE, text encoder and pipeline land."""
