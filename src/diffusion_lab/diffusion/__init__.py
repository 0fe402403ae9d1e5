"""Diffusion math with no Lightning and no Hydra: usable from a notebook."""

from diffusion_lab.diffusion.gaussian import GaussianDiffusion
from diffusion_lab.diffusion.samplers import ddim_sample, ddpm_sample, sample
from diffusion_lab.diffusion.schedules import cosine_betas, linear_betas, make_betas

__all__ = [
    "GaussianDiffusion",
    "cosine_betas",
    "ddim_sample",
    "ddpm_sample",
    "linear_betas",
    "make_betas",
    "sample",
]
