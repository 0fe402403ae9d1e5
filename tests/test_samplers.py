"""The samplers: time grids, the update equations against each other and against a Gaussian
toy with a closed-form denoiser, every sampler through `generate` with every objective and
kind of conditioning, batch-size independence, and the one-line errors."""

import math

import pytest
import torch

from diffusion_lab.diffusion import (
    GaussianDiffusion,
    ImageNoise,
    SequentialNoise,
    linear_betas,
    make_sampler,
    time_grid,
)
from diffusion_lab.diffusion.samplers import SAMPLERS, ddim_timesteps, sampler_classes
from diffusion_lab.diffusion.score_guidance import score_guided
from diffusion_lab.errors import UserError
from diffusion_lab.models import GeluUNet
from diffusion_lab.models.contract import check_denoiser
from diffusion_lab.sampling import generate, sampler_options

GRID_SAMPLERS = ["ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_2m_sde"]


def tiny_net(**kwargs) -> GeluUNet:
    torch.manual_seed(0)
    return GeluUNet(in_channels=1, image_size=8, channels=[8, 16], groups=4, time_dim=16, **kwargs)


# ---- grids ---------------------------------------------------------------------------------
def test_uniform_grids_follow_the_diffusers_definitions():
    d = GaussianDiffusion(linear_betas(1000))
    assert time_grid(d, 10, "leading").times == tuple(range(900, -1, -100))
    assert time_grid(d, 10, "trailing").times == tuple(range(999, 0, -100))
    assert list(time_grid(d, 10, "linspace").times) == ddim_timesteps(1000, 10)
    assert time_grid(d, 10, "linspace").times[:2] == (999, 888)
    for spacing in ("linspace", "leading", "trailing", "karras"):
        grid = time_grid(d, 7, spacing)
        assert len(grid) == 7 and len(grid.sigmas) == 8 and grid.sigmas[-1] == 0
        assert all(a > b for a, b in zip(grid.sigmas, grid.sigmas[1:]))


def test_karras_grid_spans_the_schedule_with_rho_7():
    d = GaussianDiffusion(linear_betas(1000))
    grid = time_grid(d, 5, "karras")
    sigma = ((1 - d.alpha_bar.double()) / d.alpha_bar.double()).sqrt()
    assert grid.sigmas[0] == pytest.approx(float(sigma[-1]), rel=1e-6)
    assert grid.sigmas[4] == pytest.approx(float(sigma[0]), rel=1e-4)
    assert grid.times[0] == pytest.approx(999) and grid.times[-1] == pytest.approx(0, abs=1e-6)
    # equal steps in sigma^(1/7)
    roots = [s ** (1 / 7) for s in grid.sigmas[:5]]
    assert max(roots[i] - roots[i + 1] for i in range(4)) == pytest.approx(
        min(roots[i] - roots[i + 1] for i in range(4)), rel=1e-9
    )
    # the fractional timestep's noise level is the grid's
    t = torch.tensor(grid.times[1:4], dtype=torch.float32)
    assert torch.allclose(
        d.log_sigma_at(t).double().exp(),
        torch.tensor(grid.sigmas[1:4], dtype=torch.float64),
        rtol=1e-5,
    )


# ---- the updates -----------------------------------------------------------------------------
def _fake_net(x, t):
    return 0.9 * x + 0.1 * torch.tanh(3 * x) + 0.01 * t.float().reshape(-1, 1, 1, 1) / 100


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "karras"])
def test_euler_is_ddim_with_eta_zero(spacing):
    d = GaussianDiffusion(linear_betas(200))
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    runs = [
        make_sampler(d, {"name": n, "steps": 8, "spacing": spacing}).run(
            _fake_net, x, SequentialNoise()
        )
        for n in ("euler", "ddim")
    ]
    assert torch.allclose(*runs, atol=1e-5)


def test_ddpm_on_a_subset_is_ddim_with_eta_one():
    d = GaussianDiffusion(linear_betas(200))
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a, b = (
        make_sampler(d, opts).run(_fake_net, x, SequentialNoise(torch.Generator().manual_seed(1)))
        for opts in ({"name": "ddpm", "steps": 9}, {"name": "ddim", "steps": 9, "eta": 1.0})
    )
    assert torch.allclose(a, b, atol=1e-4)


MU, S = 0.3, 0.5


def _gaussian_denoiser(d: GaussianDiffusion):
    """The exact eps prediction for data N(MU, S^2) per pixel: E[x0 | x_t] is linear in x_t."""

    def denoise(x, t):
        a, s1 = d.scales(t, x.ndim)
        x0 = MU + a * S**2 / (a**2 * S**2 + s1**2) * (x - a * MU)
        return (x - a * x0) / s1

    return denoise


def _toy_error(name: str, steps: int) -> tuple[float, float, float]:
    """(error at sigma_min against the exact ODE flow, final mean, final std). Every solver
    is linear here, so x_T = 0 and x_T = 1 give the flow's offset and slope exactly."""
    d = GaussianDiffusion(linear_betas(1000), clip_x0=False)
    sampler = make_sampler(d, {"name": name, "steps": steps, "spacing": "karras"})
    xs = []
    x_T = torch.tensor([0.0, 1.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    out = sampler.run(
        _gaussian_denoiser(d), x_T, SequentialNoise(), lambda i, t, x, x0: xs.append(x)
    )
    g = sampler.grid
    s_max, s_min = g.sigmas[0], g.sigmas[steps - 1]

    def exact(x):  # x / a ~ N(MU, S^2 + sigma^2) along the flow
        return g.alpha(steps - 1) * (
            MU + math.sqrt(S**2 + s_min**2) / math.sqrt(S**2 + s_max**2) * (x / g.alpha(0) - MU)
        )

    at_min = xs[-2].flatten()  # after the step that lands on sigma_min
    err = abs(float(at_min[0]) - exact(0.0)) + abs(
        float(at_min[1] - at_min[0]) - (exact(1.0) - exact(0.0))
    )
    return err, float(out[0]), float(out[1] - out[0])


@pytest.mark.parametrize("name, order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_ode_solvers_converge_on_a_gaussian_with_their_order(name, order):
    errors = [_toy_error(name, n)[0] for n in (10, 20, 40)]
    ratio = errors[1] / errors[2]  # halving the step size
    expected = 2**order
    assert 0.75 * expected < ratio < 1.5 * expected, errors
    _, mean, std = _toy_error(name, 40)
    assert mean == pytest.approx(MU, abs=2e-3)
    assert std == pytest.approx(S, abs=0.04 if order == 1 else 0.01)


# ---- through generate ------------------------------------------------------------------------
def _sampler(name: str) -> dict:
    if name == "repaint":
        return {"name": "repaint", "steps": 4, "jump_length": 2, "resamples": 2}
    if name == "onepass":
        return {"name": "onepass"}
    return {"name": name, "steps": 3}


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "onepass"])
def test_every_sampler_with_every_objective_cfg_and_guide(name, objective):
    net = tiny_net(num_classes=3)
    d = GaussianDiffusion(linear_betas(20), objective=objective)
    calls = []

    def guide(denoise):
        def score(x0):
            calls.append(1)
            return -(x0**2).flatten(1).sum(1)

        return score_guided(d, denoise, score, 0.1)

    x = generate(
        net,
        d,
        3,
        sampler=_sampler(name),
        guidance_scale=2.0,
        labels=torch.tensor([0, 1, 2]),
        guide=guide,
    )
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all() and x.abs().max() <= 1
    assert len(calls) == make_sampler(d, _sampler(name)).nfe


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_inpaints_with_a_self_conditioned_mask_model(name):
    net = tiny_net(mask_conditioning=True, self_condition=True)
    d = GaussianDiffusion(linear_betas(20), objective="v", self_condition=True)
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[2].self_cond))
    known = torch.rand(2, 1, 8, 8) * 2 - 1
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    x = generate(net, d, 2, sampler=_sampler(name), known=known, mask=mask)
    assert torch.equal(x * mask, known * mask) and torch.isfinite(x).all()
    assert seen[0] is None and all(s is not None for s in seen[1:])


def test_a_net_without_mask_conditioning_inpaints_with_repaint():
    net, d = tiny_net(), GaussianDiffusion(linear_betas(20))
    known, mask = torch.rand(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    x = generate(net, d, 2, sampler={"name": "heun", "steps": 3}, known=known, mask=mask)
    assert torch.equal(x * mask, known * mask)


@pytest.mark.parametrize("name", ["ddpm", "heun", "dpmpp_2m_sde", "repaint"])
def test_images_do_not_depend_on_the_batch_size(name):
    net = tiny_net(num_classes=3)
    d = GaussianDiffusion(linear_betas(20))
    opts = {"name": name, "steps": 4} if name != "repaint" else _sampler("repaint")
    one = generate(net, d, 8, sampler=opts, seed=5, guidance_scale=2.0)
    parts = generate(net, d, 8, sampler=opts, seed=5, guidance_scale=2.0, batch_size=3)
    # the same noise; the network's kernels may sum in another order for another batch size
    # (oneDNN on AVX2 CPUs), so the images agree to float rounding, not always bit for bit
    torch.testing.assert_close(one, parts, atol=1e-5, rtol=0)
    assert not torch.allclose(one, generate(net, d, 8, sampler=opts, seed=6, guidance_scale=2.0))
    # image i is image i of a longer run too
    shorter = generate(net, d, 3, sampler=opts, seed=5, guidance_scale=2.0)
    torch.testing.assert_close(shorter, one[:3], atol=1e-5, rtol=0)


def test_image_noise_is_per_image():
    a = ImageNoise(0, range(4))(torch.empty(4, 2, 3))
    b = ImageNoise(0, range(2, 4))(torch.empty(2, 2, 3))
    assert torch.equal(a[2:], b)


# ---- settings and errors ---------------------------------------------------------------------
def test_sampler_options_do_not_carry_settings_over_to_another_sampler():
    configured = {"name": "ddim", "steps": 50, "eta": 0.5}
    assert sampler_options(configured, {"steps": 5}) == {"name": "ddim", "steps": 5, "eta": 0.5}
    assert sampler_options(configured, {"name": "heun"}) == {"name": "heun"}
    # ddim's eta at 0 asks for nothing, so a settings dict merged elsewhere still works
    assert make_sampler(
        GaussianDiffusion(linear_betas(20)), {"name": "euler", "steps": 5, "eta": 0.0}
    )


class Untouchable(GeluUNet):
    def forward(self, x, t, cond=None):
        raise AssertionError("the network ran before the settings were checked")


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"name": "dpm"}, r"sampler.name='dpm' is not one of \['ddpm', 'ddim', 'euler'"),
        (
            {"name": "ddim", "steps": 0},
            "sampler.steps=0 must be between 1 and schedule.timesteps=20",
        ),
        ({"name": "heun", "steps": 21}, "sampler.steps=21 must be between 1 and schedule"),
        (
            {"name": "euler", "resamples": 10, "jump_length": 10},
            r"sampler.resamples=10: euler cannot do RePaint's resampling \(resamples is a "
            r"setting of repaint\); euler's settings: steps, spacing",
        ),
        ({"name": "heun", "eta": 0.5}, "sampler.eta=0.5: heun cannot do stochastic DDIM"),
        ({"name": "onepass", "steps": 5}, "sampler.steps=5: onepass cannot do a time grid"),
        (
            {"name": "ddim", "stpes": 5},
            "sampler.stpes is not a setting of ddim; its settings: steps, spacing, eta",
        ),
        (
            {"name": "euler", "spacing": "cosine"},
            r"sampler.spacing='cosine' is not one of \['linspace'",
        ),
        ({"name": "onepass"}, "sampler.name=onepass is for inpainting"),
    ],
)
def test_bad_sampler_settings_are_one_line_before_any_network_call(opts, message):
    torch.manual_seed(0)
    net = Untouchable(in_channels=1, image_size=8, channels=[8, 16], groups=4, time_dim=16)
    with pytest.raises(UserError, match=message) as info:
        generate(net, GaussianDiffusion(linear_betas(20)), 2, sampler=opts)
    assert "\n" not in str(info.value)


def test_every_sampler_documents_its_step():
    for cls in sampler_classes().values():
        assert cls.__doc__ and len(cls.__doc__.splitlines()) >= 2


def test_a_network_without_the_contract_is_one_line():
    class Bare(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return x

    with pytest.raises(UserError, match=r"model \(Bare\) does not follow the denoiser contract"):
        check_denoiser(Bare())
    net = tiny_net()
    check_denoiser(net)
