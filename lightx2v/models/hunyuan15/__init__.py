"""HunyuanVideo-1.5: the DiT, the VAE, the text conditioning glue, and the family's declaration
(spec.py, registered: text-to-video from the diffusers layout; pipelines/hunyuan15.py)."""
