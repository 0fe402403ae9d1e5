# Makes the config folder importable, so Hydra finds it on its package search path (pkg://diffusion_lab.conf).
