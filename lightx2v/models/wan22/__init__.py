"""Wan2.2 (T2V-A14B, I2V-A14B, TI2V-5B): a family of configurations of the Wan modules (lightx2v.models.wan)."""
