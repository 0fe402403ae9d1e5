"""Reverse-process samplers: DDPM ancestral sampling and DDIM.

Each sampler takes `denoise(x_t, t) -> network output` (conditioning and guidance already
bound, see `guidance.py`), so the same code serves every model and every kind of guidance.
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffusion_lab.diffusion.gaussian import DenoiseFn, GaussianDiffusion, _gather
from diffusion_lab.errors import require

SAMPLERS = ("ddpm", "ddim")

# called after every step with (step index, t, x_t after the step, predicted x0)
StepCallback = Callable[[int, int, Tensor, Tensor], None]


def _randn(shape: Sequence[int], device, generator) -> Tensor:
    return torch.randn(tuple(shape), device=device, generator=generator)


def ddpm_sample(
    diffusion: GaussianDiffusion,
    denoise: DenoiseFn,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Ancestral sampling with the posterior variance of Ho et al. (2020), all T steps."""
    device = diffusion.betas.device
    x = x_T if x_T is not None else _randn(shape, device, generator)
    T = diffusion.num_timesteps
    for i, step in enumerate(reversed(range(T))):
        t = torch.full((x.shape[0],), step, device=device, dtype=torch.long)
        x0, _ = diffusion.split_prediction(denoise(x, t), x, t)
        mean, log_var = diffusion.p_mean_var(x0, x, t)
        if step > 0:
            x = mean + (0.5 * log_var).exp() * _randn(x.shape, device, generator)
        else:
            x = mean
        if callback is not None:
            callback(i, step, x, x0)
    return x


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` evenly spaced timesteps from T-1 down to 0."""
    require(
        1 <= steps <= num_timesteps,
        f"sampler.steps={steps} must be between 1 and schedule.timesteps={num_timesteps}",
    )
    ts = torch.linspace(0, num_timesteps - 1, steps).round().long().unique().tolist()
    return sorted(ts, reverse=True)


def ddim_sample(
    diffusion: GaussianDiffusion,
    denoise: DenoiseFn,
    shape: Sequence[int],
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021). eta=0 is deterministic; eta=1 with all T steps is DDPM."""
    require(eta >= 0, f"sampler.eta must be >= 0, got {eta}")
    device = diffusion.betas.device
    x = x_T if x_T is not None else _randn(shape, device, generator)
    ts = ddim_timesteps(diffusion.num_timesteps, steps)
    for i, step in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        t = torch.full((x.shape[0],), step, device=device, dtype=torch.long)
        x0, eps = diffusion.split_prediction(denoise(x, t), x, t)
        ab = _gather(diffusion.alpha_bar, t, x.ndim)
        ab_prev = (
            _gather(diffusion.alpha_bar, torch.full_like(t, prev), x.ndim)
            if prev >= 0
            else torch.ones_like(ab)
        )
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if prev >= 0 and eta > 0:
            x = x + sigma * _randn(x.shape, device, generator)
        if callback is not None:
            callback(i, step, x, x0)
    return x


def sample(
    diffusion: GaussianDiffusion,
    denoise: DenoiseFn,
    shape: Sequence[int],
    name: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Dispatch on the sampler name from config (`sampler.name`)."""
    require(name in SAMPLERS, f"sampler.name={name!r} is not one of {list(SAMPLERS)}")
    if name == "ddpm":
        return ddpm_sample(diffusion, denoise, shape, generator=generator, callback=callback)
    return ddim_sample(
        diffusion, denoise, shape, steps=steps, eta=eta, generator=generator, callback=callback
    )
