import pytest
import torch

from diffusion_lab.diffusion import (
    GaussianDiffusion,
    cosine_betas,
    ddim_sample,
    ddpm_sample,
    linear_betas,
)
from diffusion_lab.diffusion.guidance import keep_known
from diffusion_lab.diffusion.samplers import ddim_timesteps


def test_forward_process_statistics():
    d = GaussianDiffusion(linear_betas(1000))
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    g = torch.Generator().manual_seed(0)  # unseeded, the variance misses its tolerance ~5% of runs
    for step in (0, 250, 999):
        t = torch.full((len(x0),), step)
        xt = d.q_sample(x0, t, torch.randn(x0.shape, generator=g))
        ab = d.alpha_bar[step].item()
        assert xt.mean().item() == pytest.approx(0.5 * ab**0.5, abs=0.02)
        assert xt.var().item() == pytest.approx(1 - ab, abs=0.02)


def test_logit_normal_timesteps_lean_toward_high_noise_and_stay_in_range():
    uniform = GaussianDiffusion(linear_betas(1000))
    shifted = GaussianDiffusion(
        linear_betas(1000), timestep_sampling="logit_normal", timestep_mean=1.5
    )
    g = torch.Generator().manual_seed(0)
    tu = uniform.sample_timesteps(20000, torch.device("cpu"), g)
    ts = shifted.sample_timesteps(20000, torch.device("cpu"), g)
    assert ts.dtype == torch.long and 0 <= ts.min() and ts.max() <= 999
    # median at T * sigmoid(1.5) = 818; uniform draws put a median at ~500
    assert ts.float().median().item() == pytest.approx(818, abs=15)
    assert tu.float().median().item() == pytest.approx(500, abs=15)
    assert (ts < 500).float().mean().item() == pytest.approx(0.067, abs=0.01)  # P(z < -1.5)
    # the same generator state gives the same draws (exact resume)
    a = shifted.sample_timesteps(8, torch.device("cpu"), torch.Generator().manual_seed(3))
    b = shifted.sample_timesteps(8, torch.device("cpu"), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_prediction_conversions_recover_x0_and_eps(objective):
    d = GaussianDiffusion(linear_betas(100), objective=objective, clip_x0=False)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 10, 50, 99])
    xt = d.q_sample(x0, t, eps)
    x0_hat, eps_hat = d.split_prediction(d.target(x0, t, eps), xt, t)
    assert torch.allclose(x0_hat, x0, atol=1e-4)
    assert torch.allclose(eps_hat, eps, atol=1e-3)


def test_on_cosine_betas_at_t100_eps_amplifies_its_error_into_x0_and_v_does_not():
    """Why mnist_class_cfg predicts v: at T=100 the cosine schedule ends at alpha_bar ~ 2e-7,
    where the x0 an eps-prediction implies multiplies the prediction's error ~2,000x."""
    betas = cosine_betas(100)
    t = torch.full((1000,), 99)
    x0 = torch.rand(1000, 1, 4, 4) * 2 - 1
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    error = 0.01 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    gaps = {}
    for objective in ("eps", "v"):
        d = GaussianDiffusion(betas, objective=objective, clip_x0=False)
        assert float(d.alpha_bar[99]) < 1e-6
        xt = d.q_sample(x0, t, eps)
        x0_hat, _ = d.split_prediction(d.target(x0, t, eps) + error, xt, t)
        gaps[objective] = float((x0_hat - x0).abs().mean() / error.abs().mean())
    assert gaps["eps"] > 1000 and gaps["v"] <= 1.0


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_output_from_x0_is_the_inverse_of_split_prediction(objective):
    d = GaussianDiffusion(linear_betas(100), objective=objective, clip_x0=False)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    xt = d.q_sample(x0, torch.tensor([0, 10, 50, 99]), torch.randn_like(x0))
    t = torch.tensor([0, 10, 50, 99])
    out = d.output_from_x0(x0, xt, t)
    assert torch.allclose(d.split_prediction(out, xt, t)[0], x0, atol=1e-4)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_keep_known_puts_the_known_pixels_into_every_x0_prediction(objective):
    d = GaussianDiffusion(linear_betas(100), objective=objective)
    known = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    seen = []

    def garbage(x, t):  # predicts noise everywhere, as a masked-loss model may on known pixels
        out = torch.randn_like(x)
        seen.append(d.split_prediction(out, x, t)[0])
        return out

    denoise = keep_known(d, garbage, known, mask)
    xt, t = torch.randn_like(known), torch.full((2,), 60)
    x0 = d.split_prediction(denoise(xt, t), xt, t)[0]
    assert torch.allclose(x0 * mask, known * mask, atol=1e-4)
    assert torch.allclose(x0 * (1 - mask), seen[0] * (1 - mask), atol=1e-4)  # rest untouched


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_perfect_model_has_zero_loss(objective):
    d = GaussianDiffusion(linear_betas(50), objective=objective, loss_weighting="min_snr")
    x0 = torch.rand(8, 1, 4, 4) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.randint(0, 50, (8,))
    losses, _ = d.training_losses(lambda x, tt: d.target(x0, tt, eps), x0, t=t, noise=eps)
    assert losses.abs().max() < 1e-10
    wrong, _ = d.training_losses(lambda x, tt: torch.zeros_like(x), x0, t=t, noise=eps)
    assert (wrong > 0).all()


def test_loss_mask_counts_only_masked_pixels():
    d = GaussianDiffusion(linear_betas(10), objective="x0")
    x0 = torch.zeros(2, 1, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[..., :2] = 1
    out = torch.zeros(2, 1, 4, 4)
    out[..., 2:] = 5.0  # errors only outside the mask
    losses, _ = d.training_losses(lambda x, t: out, x0, loss_mask=mask)
    assert losses.abs().max() == 0


def test_ddim_with_eta_one_and_all_steps_is_ddpm():
    d = GaussianDiffusion(linear_betas(20), objective="eps")
    net = lambda x, t: 0.1 * x + 0.01 * t.float()[:, None, None, None]  # noqa: E731
    a = ddpm_sample(d, net, (3, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    b = ddim_sample(
        d, net, (3, 1, 4, 4), steps=20, eta=1.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(a, b, atol=1e-4)


def test_ddim_timesteps_and_shapes():
    assert ddim_timesteps(1000, 10)[0] == 999 and ddim_timesteps(1000, 10)[-1] == 0
    assert len(ddim_timesteps(1000, 10)) == 10
    d = GaussianDiffusion(linear_betas(100))
    out = ddim_sample(d, lambda x, t: torch.zeros_like(x), (2, 3, 8, 8), steps=10)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()


def test_self_conditioning_trains_on_its_own_detached_estimate_half_the_time():
    d = GaussianDiffusion(linear_betas(100), objective="x0", self_condition=True)
    calls = []

    def model(x, t, estimate):
        calls.append((estimate, torch.is_grad_enabled()))
        return torch.full_like(x, 0.25)  # "x0 = 0.25 everywhere"

    x0 = torch.zeros(400, 1, 2, 2, requires_grad=True)
    d.training_losses(model, x0, generator=torch.Generator().manual_seed(0))
    (first, grad_first), (second, grad_second) = calls
    assert first is None and not grad_first and grad_second  # the estimate has no gradient
    with_estimate = (second == 0.25).flatten(1).all(1)
    assert ((second == 0) | (second == 0.25)).all()
    assert 0.4 < with_estimate.float().mean().item() < 0.6
