"""HunyuanVideo-1.5 (step 1: the DiT only; the family is not registered until its VAE, text
conditioning and pipeline land)."""
