"""Several GPUs: the pieces the parallel transform composes (ring attention, parallel VAE decode)."""
