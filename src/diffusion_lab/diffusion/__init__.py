"""Diffusion math with no Lightning and no Hydra: usable from a notebook."""

from diffusion_lab.diffusion.edm import FORMULATIONS, EDMDiffusion
from diffusion_lab.diffusion.gaussian import GaussianDiffusion, diffusion_from_config
from diffusion_lab.diffusion.noise import ImageNoise, Noise, SequentialNoise
from diffusion_lab.diffusion.samplers import (
    SAMPLERS,
    SPACINGS,
    Sampler,
    TimeGrid,
    ddim_sample,
    ddpm_sample,
    make_sampler,
    sample,
    time_grid,
)
from diffusion_lab.diffusion.schedules import cosine_betas, linear_betas, make_betas

# either formulation: both train through `training_losses` and sample through `denoiser`,
# `split_prediction` and `output_from_x0`
Diffusion = GaussianDiffusion | EDMDiffusion

__all__ = [
    "FORMULATIONS",
    "SAMPLERS",
    "SPACINGS",
    "Diffusion",
    "EDMDiffusion",
    "GaussianDiffusion",
    "ImageNoise",
    "Noise",
    "Sampler",
    "SequentialNoise",
    "TimeGrid",
    "cosine_betas",
    "ddim_sample",
    "ddpm_sample",
    "diffusion_from_config",
    "linear_betas",
    "make_betas",
    "make_sampler",
    "sample",
    "time_grid",
]
