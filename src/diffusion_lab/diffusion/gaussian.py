"""The forward process q(x_t | x_0), the training objective and the reverse-step quantities.

Everything precomputed is a float32 buffer, so it follows the model to any device and stays
float32 under autocast.
"""

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from diffusion_lab.errors import require

if TYPE_CHECKING:
    from diffusion_lab.diffusion.edm import EDMDiffusion

OBJECTIVES = ("eps", "x0", "v")
LOSS_WEIGHTINGS = ("none", "min_snr")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")

# model(x_t, t) -> prediction in the parametrisation of the objective
DenoiseFn = Callable[[Tensor, Tensor], Tensor]


def _gather(values: Tensor, t: Tensor, ndim: int) -> Tensor:
    """values[t] reshaped to broadcast against a batch of images of `ndim` dims."""
    return values.gather(0, t).reshape(-1, *([1] * (ndim - 1)))


class GaussianDiffusion(nn.Module):
    """DDPM (Ho et al. 2020) with a choice of what the network predicts.

    objective: "eps" (the noise, the paper's default), "x0" (the clean image) or
    "v" (Salimans & Ho 2022, v = sqrt(ab) eps - sqrt(1-ab) x0).
    loss_weighting: "none" or "min_snr" (Hang et al. 2023), which weights each timestep as if
    the loss were on x0 with weight min(SNR, gamma).
    timestep_sampling: how training draws t: "uniform" over 0..T-1 (the paper), or
    "logit_normal" (Esser et al. 2024): t / T = sigmoid(N(timestep_mean, timestep_std)); a
    positive mean spends more of the training on high noise, where the layout is decided.
    self_condition: Chen et al. (2022): half the time the network also sees its own x0
    estimate for the same x_t (computed without gradient), so that at sampling time it can
    refine the previous step's estimate instead of starting from nothing at every step.
    """

    formulation = "ddpm"
    prior_std = 1.0  # sampling starts from x_T ~ N(0, I), as Ho et al. (2020)

    def __init__(
        self,
        betas: Tensor,
        objective: str = "eps",
        loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
        clip_x0: bool = True,
        timestep_sampling: str = "uniform",
        timestep_mean: float = 0.0,
        timestep_std: float = 1.0,
        self_condition: bool = False,
    ) -> None:
        super().__init__()
        require(
            objective in OBJECTIVES,
            f"diffusion.objective={objective!r} is not one of {list(OBJECTIVES)}",
        )
        require(
            loss_weighting in LOSS_WEIGHTINGS,
            f"diffusion.loss_weighting={loss_weighting!r} is not one of {list(LOSS_WEIGHTINGS)}",
        )
        require(
            timestep_sampling in TIMESTEP_SAMPLINGS,
            f"diffusion.timestep_sampling={timestep_sampling!r} is not one of "
            f"{list(TIMESTEP_SAMPLINGS)}",
        )
        require(timestep_std > 0, f"diffusion.timestep_std={timestep_std} must be > 0")
        require(betas.ndim == 1 and len(betas) >= 2, "betas must be a 1-D tensor of length >= 2")
        require(
            bool(((betas > 0) & (betas < 1)).all()),
            f"every beta must be in (0, 1); got min {betas.min():.3g}, max {betas.max():.3g}",
        )
        self.objective = objective
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.clip_x0 = clip_x0
        self.timestep_sampling = timestep_sampling
        self.timestep_mean, self.timestep_std = float(timestep_mean), float(timestep_std)
        self.self_condition = bool(self_condition)
        self.num_timesteps = len(betas)

        b = betas.double()
        alphas = 1 - b
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        posterior_var = b * (1 - alpha_bar_prev) / (1 - alpha_bar)
        buffers = {
            "betas": b,
            "alphas": alphas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            "snr": alpha_bar / (1 - alpha_bar),
            "posterior_var": posterior_var,
            # log of the variance with the t=0 entry (which is 0) replaced, as in the paper's code
            "posterior_log_var": torch.log(torch.cat([posterior_var[1:2], posterior_var[1:]])),
            "posterior_coef_x0": b * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "posterior_coef_xt": (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar),
            # log of the noise level sigma_t = sqrt((1 - ab_t) / ab_t): fractional timesteps
            # interpolate it (see alpha_bar_at)
            "log_sigma": 0.5 * (torch.log1p(-alpha_bar) - torch.log(alpha_bar)),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def denoiser(self, net: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """The network as samplers call it, (x_t, t, cond) -> the objective's prediction: the
        network itself (EDMDiffusion wraps it in its preconditioning here)."""
        return net

    # ---- forward process -------------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
        return (
            _gather(self.sqrt_alpha_bar, t, x0.ndim) * x0
            + _gather(self.sqrt_one_minus_alpha_bar, t, x0.ndim) * noise
        )

    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        if self.objective == "eps":
            return noise
        if self.objective == "x0":
            return x0
        return (
            _gather(self.sqrt_alpha_bar, t, x0.ndim) * noise
            - _gather(self.sqrt_one_minus_alpha_bar, t, x0.ndim) * x0
        )

    # ---- conversions between parametrisations ----------------------------------------------
    def scales(self, t: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
        """(sqrt(ab_t), sqrt(1 - ab_t)) shaped to broadcast against images of `ndim` dims.

        Integer t reads the tables; fractional t (a Karras grid's) interpolates log sigma,
        sigma^2 = (1 - ab) / ab, linearly between the neighbouring integers: the inverse of
        how diffusers and k-diffusion turn a sigma into a timestep.
        """
        if not torch.is_floating_point(t):
            return _gather(self.sqrt_alpha_bar, t, ndim), _gather(
                self.sqrt_one_minus_alpha_bar, t, ndim
            )
        log_sigma = self.log_sigma_at(t).reshape(-1, *([1] * (ndim - 1)))
        # both from log sigma: 1 - ab computed as 1 - (a float near 1) loses digits near t = 0
        return torch.sigmoid(-2 * log_sigma).sqrt(), torch.sigmoid(2 * log_sigma).sqrt()

    def log_sigma_at(self, t: Tensor) -> Tensor:
        """log sigma_t at integer or fractional timesteps t in [0, T - 1]."""
        if not torch.is_floating_point(t):
            return self.log_sigma.gather(0, t)
        t = t.float().clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        return torch.lerp(self.log_sigma[lo], self.log_sigma[lo + 1], t - lo)

    def alpha_bar_at(self, t: Tensor) -> Tensor:
        """alpha_bar at integer or fractional timesteps (see `scales`)."""
        if not torch.is_floating_point(t):
            return self.alpha_bar.gather(0, t)
        return torch.sigmoid(-2 * self.log_sigma_at(t))

    def split_prediction(self, out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(predicted x0, predicted eps) from the network output; x0 optionally clipped to [-1, 1]."""
        out = out.float()
        sa, s1 = self.scales(t, x_t.ndim)
        if self.objective == "eps":
            x0 = (x_t - s1 * out) / sa
        elif self.objective == "x0":
            x0 = out
        else:
            x0 = sa * x_t - s1 * out
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
        if self.objective == "eps" and not self.clip_x0:
            return x0, out
        # eps consistent with the (possibly clipped) x0
        return x0, (x_t - sa * x0) / s1

    def output_from_x0(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The network output (in this objective's parametrisation) that predicts `x0` at x_t."""
        if self.objective == "x0":
            return x0
        sa, s1 = self.scales(t, x_t.ndim)
        eps = (x_t - sa * x0) / s1
        return eps if self.objective == "eps" else sa * eps - s1 * x0

    # ---- training loss ---------------------------------------------------------------------
    def sample_timesteps(
        self, b: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Tensor:
        """b training timesteps drawn as `timestep_sampling` says."""
        if self.timestep_sampling == "uniform":
            return torch.randint(0, self.num_timesteps, (b,), device=device, generator=generator)
        z = torch.randn(b, device=device, generator=generator)
        u = torch.sigmoid(self.timestep_mean + self.timestep_std * z)
        return (u * self.num_timesteps).long().clamp(max=self.num_timesteps - 1)

    def loss_weights(self, t: Tensor) -> Tensor:
        if self.loss_weighting == "none":
            return torch.ones_like(t, dtype=torch.float32)
        snr = self.snr.gather(0, t)
        clipped = snr.clamp(max=self.min_snr_gamma)
        # min-SNR-gamma expressed for each parametrisation (Hang et al. 2023, eq. 8-10)
        if self.objective == "eps":
            return clipped / snr
        if self.objective == "x0":
            return clipped
        return clipped / (snr + 1)

    def training_losses(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        x0: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        loss_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-sample weighted MSE between the network output and the objective's target.

        `model(x_t, t)` is the network with its conditioning already bound; with
        self_condition it is `model(x_t, t, x0_estimate)` (None: no estimate). `loss_mask`
        (broadcastable to x0, 1 = counts) restricts the loss to a region, e.g. the unknown
        pixels of an inpainting task. Returns (per-sample loss [B], t [B]).
        """
        b = x0.shape[0]
        if t is None:
            t = self.sample_timesteps(b, x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.q_sample(x0, t, noise)
        if self.self_condition:
            with torch.no_grad():
                estimate = self.split_prediction(model(x_t, t, None), x_t, t)[0].to(x_t.dtype)
            use = torch.rand(b, device=x0.device, generator=generator) < 0.5
            out = model(x_t, t, torch.where(use[:, None, None, None], estimate, 0.0)).float()
        else:
            out = model(x_t, t).float()
        sq = (out - self.target(x0, t, noise)) ** 2
        if loss_mask is None:
            per_sample = sq.flatten(1).mean(1)
        else:
            m = loss_mask.expand_as(sq).flatten(1)
            per_sample = (sq.flatten(1) * m).sum(1) / m.sum(1).clamp(min=1)
        return per_sample * self.loss_weights(t), t

    # ---- reverse process -------------------------------------------------------------------
    def p_mean_var(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of the posterior q(x_{t-1} | x_t, x0)."""
        mean = (
            _gather(self.posterior_coef_x0, t, x_t.ndim) * x0
            + _gather(self.posterior_coef_xt, t, x_t.ndim) * x_t
        )
        return mean, _gather(self.posterior_log_var, t, x_t.ndim)


def diffusion_from_config(config: Mapping[str, Any]) -> "GaussianDiffusion | EDMDiffusion":
    """The diffusion of a run config (a plain dict, e.g. a checkpoint's `diffusion_lab_config`).
    `diffusion.formulation` (ddpm when absent, as in configs before it existed) picks the
    class; the rest of `diffusion` are its keyword arguments. DDPM also reads `schedule`
    (name + the schedule's arguments); EDM has no schedule."""
    from diffusion_lab.diffusion.edm import FORMULATIONS, EDMDiffusion
    from diffusion_lab.diffusion.schedules import make_betas

    settings = dict(config.get("diffusion") or {})
    formulation = settings.pop("formulation", "ddpm")
    require(
        formulation in FORMULATIONS,
        f"diffusion.formulation={formulation!r} is not one of {list(FORMULATIONS)}",
    )
    if formulation == "edm":
        return EDMDiffusion(**settings)
    schedule = dict(config.get("schedule") or {})
    require("name" in schedule, "schedule.name is missing from the config (linear or cosine)")
    betas = make_betas(schedule.pop("name"), **schedule)
    return GaussianDiffusion(betas, **settings)
