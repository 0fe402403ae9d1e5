import math

import pytest
import torch

from diffusion_lab.diffusion import GaussianDiffusion, cosine_betas, linear_betas, make_betas
from diffusion_lab.errors import UserError


@pytest.mark.parametrize("T", [100, 300, 1000])
def test_linear_schedule_matches_closed_form(T):
    betas = linear_betas(T, 1e-4, 0.02)
    assert len(betas) == T
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    # alpha_bar at t = T-1 is the product of (1 - beta_i), beta_i = start + i (end - start)/(T-1)
    expected = math.prod(1 - (1e-4 + i * (0.02 - 1e-4) / (T - 1)) for i in range(T))
    d = GaussianDiffusion(betas)
    assert d.alpha_bar[-1].item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("T", [100, 1000])
def test_cosine_schedule_endpoints(T):
    d = GaussianDiffusion(cosine_betas(T))
    s = 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    assert d.alpha_bar[0].item() == pytest.approx(f(1) / f(0), rel=1e-5)
    assert d.alpha_bar[T // 2].item() == pytest.approx(f(T // 2 + 1) / f(0), rel=1e-4)
    assert d.alpha_bar[-1].item() < 1e-4  # the clipped last beta (0.999) drives it to ~0
    assert d.betas.max().item() == pytest.approx(0.999)


def test_buffers_are_float32_and_move_with_module():
    d = GaussianDiffusion(linear_betas(10))
    assert all(b.dtype == torch.float32 for b in d.buffers())
    assert "alpha_bar" not in d.state_dict()  # recomputed from config, not stored


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: linear_betas(1), "schedule.timesteps"),
        (lambda: linear_betas(10, 0.0, 0.02), "schedule.start"),
        (lambda: linear_betas(10, 0.1, 0.01), "must be <="),
        (lambda: linear_betas(10, 1e-4, 1.5), "schedule.end"),
        (lambda: make_betas("quadratic", 10), "schedule.name='quadratic' is not one of"),
        (lambda: GaussianDiffusion(linear_betas(10), objective="score"), "diffusion.objective"),
    ],
)
def test_bad_schedule_values_are_clear_errors(call, message):
    with pytest.raises(UserError, match=message):
        call()
