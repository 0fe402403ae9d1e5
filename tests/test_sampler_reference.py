"""Our ODE solvers step by step against diffusers' schedulers: same schedule, same grid, the
same fixed network output function and the same initial noise (max abs difference <= 1e-4
on x_t at every full step, in our [-1, 1] image scale)."""

import math

import pytest
import torch

from diffusion_lab.diffusion import GaussianDiffusion, linear_betas, make_sampler

diffusers = pytest.importorskip("diffusers")

T = 1000
PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def net_output(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed stand-in for a network, smooth in x and t. Close to x, as a real eps or v
    prediction is at high noise: an output far from it makes the ODE amplify float32
    rounding by ~3x per step, and no two implementations then agree."""
    t = t.float().reshape(-1, *([1] * (x.ndim - 1)))
    return 0.9 * x + 0.1 * torch.tanh(3 * x) + 0.05 * torch.sin(t / 150.0)


def net_output_without_t(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.9 * x + 0.1 * torch.tanh(3 * x)


def _scheduler(kind: str, objective: str, spacing: str, diffusion: GaussianDiffusion):
    cls = {
        "euler": diffusers.EulerDiscreteScheduler,
        "heun": diffusers.HeunDiscreteScheduler,
        "dpmpp_2m": diffusers.DPMSolverMultistepScheduler,
        "dpmpp_2m_sde": diffusers.DPMSolverMultistepScheduler,
    }[kind]
    kwargs = {
        "num_train_timesteps": T,
        "beta_schedule": "linear",
        "prediction_type": PREDICTION[objective],
        "timestep_spacing": "linspace" if spacing == "karras" else spacing,
        "use_karras_sigmas": spacing == "karras",
    }
    if kind.startswith("dpmpp"):
        kwargs.update(
            algorithm_type="sde-dpmsolver++" if kind.endswith("sde") else "dpmsolver++",
            solver_order=2,
            solver_type="midpoint",
            final_sigmas_type="zero",
        )
    scheduler = cls(**kwargs)
    # the same alpha_bar as ours, in float64 (diffusers' float32 one gives sigma(0) = sqrt(1 -
    # ab) / sqrt(ab) only to ~1e-4: 1 - ab loses its digits near t = 0)
    scheduler.alphas_cumprod = torch.cumprod(1 - diffusion.betas.double(), 0)
    return scheduler


def _run_diffusers(scheduler, kind, steps, z, fn, noises):
    """x_t (our scale, x = a x0 + s eps) after every full step of the diffusers loop."""
    scheduler.set_timesteps(steps)
    ve = kind in ("euler", "heun")  # these schedulers keep x / a
    sigma0 = float(scheduler.sigmas[0])
    x = z * math.sqrt(1 + sigma0**2) if ve else z.clone()
    out = []
    for k, t in enumerate(scheduler.timesteps):
        inp = scheduler.scale_model_input(x, t)
        kwargs = {"variance_noise": noises[k]} if kind == "dpmpp_2m_sde" else {}
        x = scheduler.step(fn(inp, t.reshape(1).expand(len(x))), t, x, **kwargs).prev_sample
        full = kind != "heun" or k % 2 == 1 or k == len(scheduler.timesteps) - 1
        if full:
            sigma = float(scheduler.sigmas[scheduler.step_index])
            out.append(x / math.sqrt(1 + sigma**2) if ve else x.clone())
    return out


class ReplayNoise:
    def __init__(self, noises):
        self.noises, self.k = noises, 0

    def __call__(self, like):
        self.k += 1
        return self.noises[self.k - 1]


# every combination diffusers has: its Euler/Heun schedulers take no x0 predictions, and its
# DPM-Solver "leading" grid has N + 1 points (the others', and ours, N)
CASES = [
    (kind, spacing, objective)
    for kind in ("euler", "heun", "dpmpp_2m", "dpmpp_2m_sde")
    for spacing in ("karras", "trailing", "leading")
    for objective in ("eps", "v", "x0")
    if not (objective == "x0" and kind in ("euler", "heun"))
    and not (spacing == "leading" and kind.startswith("dpmpp"))
]


@pytest.mark.parametrize(("kind", "spacing", "objective"), CASES)
def test_matches_diffusers_at_every_step(kind, spacing, objective):
    diffusion = GaussianDiffusion(linear_betas(T), objective=objective, clip_x0=False)
    steps = 12
    sampler = make_sampler(diffusion, {"name": kind, "steps": steps, "spacing": spacing})
    # diffusers rounds DPM-Solver's Karras timesteps to integers (we keep the fractional
    # timestep of each sigma), so there the stand-in network must not depend on t
    fn = net_output_without_t if (kind.startswith("dpmpp") and spacing == "karras") else net_output
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 1, 8, 8, generator=g)
    noises = [torch.randn(2, 1, 8, 8, generator=g) for _ in range(steps)]
    theirs = _run_diffusers(
        _scheduler(kind, objective, spacing, diffusion), kind, steps, z, fn, noises
    )
    ours = []
    sampler.run(fn, z.clone(), ReplayNoise(noises), lambda i, t, x, x0: ours.append(x))
    assert len(ours) == len(theirs) == steps
    diffs = [float((a - b).abs().max()) for a, b in zip(ours, theirs)]
    assert max(diffs) <= 1e-4, diffs


@pytest.mark.parametrize("kind", ["euler", "heun", "dpmpp_2m"])
def test_karras_grid_matches_diffusers(kind):
    diffusion = GaussianDiffusion(linear_betas(T))
    sampler = make_sampler(diffusion, {"name": kind, "steps": 10, "spacing": "karras"})
    scheduler = _scheduler(kind, "eps", "karras", diffusion)
    scheduler.set_timesteps(10)
    sigmas = scheduler.sigmas.double()
    if kind == "heun":  # diffusers repeats every inner sigma for the second-order call
        sigmas = torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
    assert torch.allclose(torch.tensor(sampler.grid.sigmas, dtype=torch.float64), sigmas, rtol=1e-6)
    assert sampler.nfe == (19 if kind == "heun" else 10)
