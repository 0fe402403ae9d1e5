"""The EDM formulation (Karras et al. 2022): the preconditioning and loss against the paper's
formulas and diffusers, log-normal noise levels, the ODE solvers on a Gaussian toy with a
closed-form denoiser, tiny trainings that sample with heun and dpmpp_2m (classifier-free
guidance, inpainting), and the one-line refusals."""

import math
from pathlib import Path

import pytest
import torch

from diffusion_lab.app.build import build_module, load_module
from diffusion_lab.app.hydra_entry import run_task
from diffusion_lab.app.train import train
from diffusion_lab.diffusion import (
    EDMDiffusion,
    GaussianDiffusion,
    diffusion_from_config,
    make_sampler,
    sample,
)
from diffusion_lab.diffusion.edm import TIME_OFFSET, TIME_SCALE
from diffusion_lab.diffusion.guidance import bind
from diffusion_lab.errors import UserError
from diffusion_lab.models import Cond, GeluUNet
from diffusion_lab.sampling import DiffusionPipeline, generate

from .conftest import compose_cfg

SIGMAS = [0.002, 0.05, 0.5, 1.0, 7.0, 80.0]
SD = 0.5
MU, S = 0.3, 0.5  # the toy data: N(MU, S^2) per pixel


def sigma_of(t: torch.Tensor) -> torch.Tensor:
    """The noise level a network's time input stands for (inverts EDMDiffusion.time_input)."""
    return torch.exp(4 * (t.double() - TIME_OFFSET) / TIME_SCALE)


def ideal_net(d: EDMDiffusion, exact_x0):
    """The raw network F whose preconditioned output D is `exact_x0(x, sigma)`: it undoes
    c_in and solves D = c_skip x + c_out F for F, as a perfect network would."""

    def net(x_in, t, *args):
        sigma = sigma_of(t).reshape(-1, *([1] * (x_in.ndim - 1)))
        x = x_in.double() / d.c_in(sigma)
        return (exact_x0(x, sigma) - d.c_skip(sigma) * x) / d.c_out(sigma)

    return net


# ---- the formulas --------------------------------------------------------------------------
def test_preconditioning_is_the_papers_table_1():
    d = EDMDiffusion()
    s = torch.tensor(SIGMAS, dtype=torch.float64)
    for i, sig in enumerate(SIGMAS):
        assert float(d.c_skip(s)[i]) == pytest.approx(SD**2 / (sig**2 + SD**2), rel=1e-12)
        assert float(d.c_out(s)[i]) == pytest.approx(sig * SD / math.sqrt(sig**2 + SD**2))
        assert float(d.c_in(s)[i]) == pytest.approx(1 / math.sqrt(sig**2 + SD**2), rel=1e-12)
        assert float(d.c_noise(s)[i]) == pytest.approx(math.log(sig) / 4, rel=1e-12)
        assert float(d.loss_weight(s)[i]) == pytest.approx((sig**2 + SD**2) / (sig * SD) ** 2)
    # lambda = 1 / c_out^2: the loss on D is a unit-weight loss on F (eq. 8)
    torch.testing.assert_close(d.loss_weight(s) * d.c_out(s) ** 2, torch.ones_like(s))
    # the time input spreads sigma_min..sigma_max over DDPM's range, increasing with sigma
    t = d.time_input(torch.tensor([0.002, 1.0, 80.0]))
    assert t.tolist() == pytest.approx([111.6, 500.0, 773.9], abs=0.1)


def test_c_skip_x_plus_c_out_f_reproduces_x0_with_the_ideal_network():
    d = EDMDiffusion()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(len(SIGMAS), 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    x = x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    col = sigma[:, None, None, None]
    f_ideal = (x0 - d.c_skip(col) * x) / d.c_out(col)
    torch.testing.assert_close(d.c_skip(col) * x + d.c_out(col) * f_ideal, x0)
    # through denoise: the network sees c_in x and the mapped time
    torch.testing.assert_close(d.denoise(ideal_net(d, lambda x, s: x0), x, sigma), x0)


def test_a_perfect_denoiser_has_zero_loss_and_a_wrong_one_does_not():
    d = EDMDiffusion()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(64, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    perfect = ideal_net(d, lambda x, s: x0)
    losses, sigma = d.training_losses(perfect, x0, generator=g)
    # zero up to the float32 time input the network gets (sigma is recovered from it)
    assert losses.shape == sigma.shape == (64,) and losses.abs().max() < 1e-9
    mask = (torch.rand(64, 1, 8, 8, generator=g) > 0.5).double()
    assert d.training_losses(perfect, x0, loss_mask=mask, generator=g)[0].abs().max() < 1e-9
    off = ideal_net(d, lambda x, s: x0 + 0.1)
    assert d.training_losses(off, x0, generator=g)[0].min() > 0


def test_training_noise_levels_are_log_normal():
    d = EDMDiffusion()
    log_sigma = d.sample_sigmas(
        200_000, torch.device("cpu"), torch.Generator().manual_seed(2)
    ).log()
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.02)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.02)
    # the per-bucket losses' edges split the draws into equal shares
    edges = d.sigma_bucket_edges(4)
    shares = torch.histogram(log_sigma.exp(), torch.tensor(edges[:-1] + [1e9]))[0] / 200_000
    assert shares.tolist() == pytest.approx([0.25] * 4, abs=0.01)


def test_coefficients_and_grid_agree_with_diffusers_edm_scheduler():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=SD)
    d = EDMDiffusion()
    x = torch.randn(len(SIGMAS), 2, 3, 3, dtype=torch.float64)
    out = torch.randn_like(x)
    for i, sig in enumerate(SIGMAS):
        s = torch.tensor([sig], dtype=torch.float64)
        col = s.reshape(1, 1, 1, 1)
        torch.testing.assert_close(scheduler.precondition_inputs(x[i], s), d.c_in(col)[0] * x[i])
        torch.testing.assert_close(scheduler.precondition_noise(s), d.c_noise(s))
        torch.testing.assert_close(
            scheduler.precondition_outputs(x[i], out[i], s),
            d.c_skip(col)[0] * x[i] + d.c_out(col)[0] * out[i],
        )
    scheduler.set_timesteps(18)
    grid = make_sampler(d, {"name": "heun", "steps": 18}).grid
    torch.testing.assert_close(
        scheduler.sigmas.double(), torch.tensor(grid.sigmas, dtype=torch.float64), rtol=1e-6, atol=0
    )


def test_euler_steps_like_diffusers_edm_euler():
    """Our euler on an EDM model, step by step against EDMEulerScheduler with the same raw
    network function F(c_in x, c_noise) and the same x_T."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=SD)
    scheduler.set_timesteps(12)
    d = EDMDiffusion()

    def f(x_in, c_noise):  # smooth in both, near the ideal network's size
        return (
            0.8 * x_in + 0.2 * torch.tanh(2 * x_in) + 0.1 * torch.sin(c_noise).reshape(-1, 1, 1, 1)
        )

    x_T = 80.0 * torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    ours = []
    sampler = make_sampler(d, {"name": "euler", "steps": 12})
    net = d.denoiser(lambda x_in, t, cond: f(x_in, (t - TIME_OFFSET) / TIME_SCALE))
    sampler.run(lambda x, t: net(x, t, None), x_T.clone(), None, lambda i, t, x, x0: ours.append(x))
    x = x_T.clone()
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        x = scheduler.step(f(x_in, t.expand(len(x))), t, x).prev_sample
        scale = max(1.0, float(scheduler.sigmas[i + 1]))
        assert (ours[i] - x).abs().max() / scale < 1e-4, i


# ---- sampling the Gaussian toy -------------------------------------------------------------
def _toy_denoiser(d: EDMDiffusion):
    """denoise(x, sigma) as samplers call it, through the preconditioning, for data N(MU, S^2):
    the exact D(x; sigma) = MU + S^2 / (S^2 + sigma^2) (x - MU)."""
    exact = ideal_net(d, lambda x, s: MU + S**2 / (S**2 + s**2) * (x - MU))
    net = d.denoiser(lambda x_in, t, cond: exact(x_in, t))
    return lambda x, t: net(x, t, None)


# (steps, relative tolerance on the std): at 18 steps (the paper's 35 network calls) Heun's
# std is 5% high on this toy, 1% at 40; Euler converges at first order
TOY_STEPS = {
    "euler": (80, 0.05),
    "heun": (40, 0.02),
    "dpmpp_2m": (40, 0.02),
    "dpmpp_2m_sde": (80, 0.03),
}


@pytest.mark.parametrize("name", list(TOY_STEPS))
def test_solvers_on_karras_sigmas_recover_the_toy_distribution(name):
    d = EDMDiffusion()
    steps, tol = TOY_STEPS[name]
    g = torch.Generator().manual_seed(4)
    x = sample(d, _toy_denoiser(d), (20_000, 1, 1, 1), name, g, steps=steps).double()
    assert float(x.mean()) == pytest.approx(MU, abs=0.015)
    assert float(x.std()) == pytest.approx(S, rel=tol)


def test_heun_follows_the_exact_flow_with_second_order_error():
    """x_T = 0 and x_T = 1 (every solver is linear here) give the flow's offset and slope;
    along the exact flow x ~ N(MU, S^2 + sigma^2), so x(sigma_min) is known in closed form."""
    d = EDMDiffusion()
    errors = []
    for steps in (10, 20, 40):
        sampler = make_sampler(d, {"name": "heun", "steps": steps})
        xs = []
        x_T = torch.tensor([0.0, 1.0], dtype=torch.float64).reshape(2, 1, 1, 1)
        sampler.run(_toy_denoiser(d), x_T, None, lambda i, t, x, x0, xs=xs: xs.append(x))
        ratio = math.sqrt(S**2 + d.sigma_min**2) / math.sqrt(S**2 + d.sigma_max**2)
        at_min = xs[-2].flatten()  # after the step landing on sigma_min
        offset, slope = MU - ratio * MU, ratio
        # the slope is ~S / sigma_max: its error relative to it is the error of the std
        errors.append(
            abs(float(at_min[0]) - offset) + abs(float(at_min[1] - at_min[0]) / slope - 1)
        )
    assert errors[2] < 0.015 and 3.0 < errors[1] / errors[2] < 6.0, errors


# ---- through the module and the sampling core ----------------------------------------------
def _tiny_edm(tmp_path: Path, *overrides: str):
    return compose_cfg(
        tmp_path,
        ["diffusion=edm", "data.image_size=8", "trainer.limit_train_batches=2", *overrides],
        tiny=True,
    )


def test_class_cfg_trains_and_samples_with_heun_and_dpmpp_2m_with_guidance(tmp_path):
    cfg = _tiny_edm(tmp_path, "conditioning=class_cfg")
    assert cfg.sampler.name == "heun" and cfg.sampler.spacing == "karras"
    metrics = train(cfg)
    assert metrics["global_step"] == 2 and math.isfinite(metrics["val/loss"])
    assert any(k.startswith("val/loss_sigma") for k in metrics)
    assert Path(cfg.paths.output_dir, "samples", "final.png").is_file()
    module, _ = load_module(Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"))
    assert isinstance(module.diffusion, EDMDiffusion)
    labels = torch.tensor([0, 5])
    for name in ("heun", "dpmpp_2m"):
        opts = {"name": name, "steps": 4}
        w1 = module.generate(2, labels=labels, sampler=opts, guidance_scale=1.0)
        w3 = module.generate(2, labels=labels, sampler=opts, guidance_scale=3.0)
        assert torch.isfinite(w3).all() and w3.abs().max() <= 1 and not torch.equal(w1, w3)
    # the notebook pipeline rebuilds the same EDM model and samples what the module samples
    pipe = DiffusionPipeline.from_checkpoint(Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"))
    opts = {"name": "heun", "steps": 3}
    assert torch.equal(
        pipe.sample(2, labels=labels, sampler=opts, guidance_scale=3.0),
        module.generate(2, labels=labels, sampler=opts, guidance_scale=3.0),
    )


def test_inpaint_trains_and_keeps_the_known_pixels_with_heun_dpmpp_2m_and_onepass(tmp_path):
    cfg = _tiny_edm(tmp_path, "conditioning=inpaint", "trainer.limit_val_batches=1")
    cfg.callbacks.inpaint_validation.n = 8
    cfg.callbacks.sample_grid = None  # the inpainting panel samples instead
    metrics = train(cfg)
    assert (
        0 <= metrics["val/inpaint_heun_acc"] <= 1 and 0 <= metrics["val/inpaint_onepass_acc"] <= 1
    )
    module = build_module(cfg)
    known = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    for opts in (
        {"name": "heun", "steps": 3},
        {"name": "dpmpp_2m", "steps": 3},
        {"name": "onepass"},
    ):
        x = module.generate(2, known=known, mask=mask, sampler=opts)
        assert torch.equal(x * mask, known * mask) and torch.isfinite(x).all()


@pytest.mark.parametrize("model", ["basic_unet", "gelu_unet", "light_unet", "attn_unet"])
def test_every_unet_takes_the_edm_loss_and_samples(tmp_path, model):
    module = build_module(_tiny_edm(tmp_path, f"model={model}", "conditioning=class_cfg"))
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    cond = Cond(labels=torch.tensor([0, 1, 2, 8]))  # 8: the null label (dropped)
    losses, sigma = module.diffusion.training_losses(bind(module.net, cond), x0)
    losses.mean().backward()
    assert torch.isfinite(losses).all() and (sigma > 0).all()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.net.parameters())
    x = module.generate(2, sampler={"name": "heun", "steps": 2}, guidance_scale=2.0)
    assert x.shape == (2, 3, 8, 8) and torch.isfinite(x).all()


def test_self_conditioning_feeds_the_previous_estimate():
    d = EDMDiffusion(self_condition=True)
    torch.manual_seed(0)
    net = GeluUNet(
        in_channels=1, image_size=8, channels=[8, 16], groups=4, time_dim=16, self_condition=True
    )
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[2].self_cond))
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1

    def model(x, t, estimate):
        return net(x, t, Cond(self_cond=estimate))

    losses, _ = d.training_losses(model, x0)
    assert torch.isfinite(losses).all() and seen[0] is None and seen[1] is not None
    seen.clear()
    generate(net, d, 2, sampler={"name": "heun", "steps": 3})
    assert seen[0] is None and all(s is not None for s in seen[1:])


# ---- refusals ------------------------------------------------------------------------------
CHOICES = "['euler', 'heun', 'dpmpp_2m', 'dpmpp_2m_sde', 'onepass']"


@pytest.mark.parametrize("name", ["ddim", "ddpm", "repaint"])
def test_ddpm_only_samplers_are_refused_in_one_line(name):
    with pytest.raises(UserError) as info:
        make_sampler(EDMDiffusion(), {"name": name})
    message = str(info.value)
    assert message == (
        f"sampler.name={name} is DDPM-only (it steps through the discrete alphas_cumprod); "
        f"a diffusion.formulation=edm model samples with one of {CHOICES}"
    )
    with pytest.raises(UserError, match="spacing='linspace': an edm model samples on the karras"):
        make_sampler(EDMDiffusion(), {"name": "heun", "spacing": "linspace"})


def test_a_plain_edm_model_cannot_inpaint_through_repaint():
    net = GeluUNet(in_channels=1, image_size=8, channels=[8, 16], groups=4, time_dim=16)
    known, mask = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    with pytest.raises(UserError, match="needs a mask-conditioned model"):
        generate(net, EDMDiffusion(), 1, known=known, mask=mask, sampler={"name": "heun"})


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["diffusion.formulation=score"],
            "diffusion.formulation='score' is not one of ['ddpm', 'edm']",
        ),
        (["diffusion=edm", "sampler=ddim"], "sampler.name=ddim is DDPM-only"),
        (
            ["diffusion.formulation=edm"],
            "diffusion.objective is not a setting of the edm diffusion",
        ),
        (["diffusion=edm", "diffusion.p_std=0"], "diffusion.p_std=0 must be > 0"),
        (["diffusion=edm", "timestep_buckets=[0,10,1000]"], "formulation=edm has no timesteps"),
    ],
)
def test_bad_edm_config_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    cfg = compose_cfg(tmp_path / "run", args, tiny=True)
    with pytest.raises(SystemExit) as exit_info:
        run_task(train, cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_configs_without_a_formulation_are_ddpm():
    config = {"schedule": {"name": "linear", "timesteps": 10}, "diffusion": {"objective": "eps"}}
    assert isinstance(diffusion_from_config(config), GaussianDiffusion)
    edm = diffusion_from_config({"diffusion": {"formulation": "edm", "sigma_max": 40.0}})
    assert isinstance(edm, EDMDiffusion) and edm.sigma_max == 40.0
