"""Beta schedules. Computed in float64, returned as float32 (precision matters near t=T)."""

import math

import torch

from diffusion_lab.errors import require


def linear_betas(timesteps: int, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule (Ho et al. 2020); start/end are the betas at t=0 and t=T-1."""
    require(
        isinstance(timesteps, int) and timesteps >= 2,
        f"schedule.timesteps must be an integer >= 2, got {timesteps!r}",
    )
    require(0 < start < 1, f"schedule.start must be in (0, 1), got {start}")
    require(0 < end < 1, f"schedule.end must be in (0, 1), got {end}")
    require(start <= end, f"schedule.start ({start}) must be <= schedule.end ({end})")
    return torch.linspace(start, end, timesteps, dtype=torch.float64).float()


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), betas clipped."""
    require(
        isinstance(timesteps, int) and timesteps >= 2,
        f"schedule.timesteps must be an integer >= 2, got {timesteps!r}",
    )
    require(0 < max_beta < 1, f"schedule.max_beta must be in (0, 1), got {max_beta}")
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta).float()


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def make_betas(name: str, timesteps: int, **kwargs: float) -> torch.Tensor:
    require(name in SCHEDULES, f"schedule.name={name!r} is not one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](timesteps, **kwargs)
