"""HunyuanVideo-1.5 (steps 1-2: the DiT, the VAE and the text conditioning glue; the family is not
registered until its image encoder and pipeline land)."""
