"""The EDM formulation (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"): a variance-exploding process x = x0 + sigma n, a network wrapped in
sigma-dependent preconditioning, log-normal noise levels and a loss weight that makes every
noise level's loss start at unit size. Beside `GaussianDiffusion` (DDPM), with the same
training and sampling interface, so the LightningModule and the samplers take either.

Notation: sigma_data (sd) is the data's standard deviation, F the raw network, D(x; sigma)
the denoiser (the x0 estimate). Equation and table numbers are the paper's (arXiv v2).
"""

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from diffusion_lab.errors import require

FORMULATIONS = ("ddpm", "edm")

# Our U-Nets embed `t` sinusoidally with periods 2 pi .. 2 pi 10^4, laid out for DDPM's
# t in 0..999. c_noise = ln(sigma) / 4 spans only ~2.7 over sigma 0.002..80, where all but
# the fastest few frequencies are constant; 250 c_noise + 500 spreads the same range over
# 112..774 (sigma = 1 at 500, the training bulk sigma 0.008..11 over 200..650).
TIME_SCALE, TIME_OFFSET = 250.0, 500.0


def _column(sigma: Tensor, ndim: int) -> Tensor:
    """sigma [B] shaped to broadcast against a batch of images of `ndim` dims."""
    return sigma.reshape(-1, *([1] * (ndim - 1)))


def _float(x: Tensor) -> Tensor:
    """At least float32 (half-precision network outputs under autocast), float64 kept."""
    return x if x.dtype == torch.float64 else x.float()


class EDMDiffusion(nn.Module):
    """EDM training and denoising (Karras et al. 2022, Table 1, "Ours" column).

    sigma_data: the data's standard deviation (0.5 for images in [-1, 1], the paper's).
    p_mean, p_std: training draws ln(sigma) ~ N(p_mean, p_std^2) (the paper's P_mean, P_std).
    sigma_min, sigma_max: the sampling range (Karras grid, eq. 5, rho = 7).
    self_condition: as in GaussianDiffusion (Chen et al. 2022): half the time the network also
    sees its own x0 estimate D, computed without gradient.
    clip_x0: clamp D to [-1, 1] when sampling; off by default as in the paper (and
    k-diffusion), since clamping inside a 2nd-order ODE step bends the flow.
    """

    formulation = "edm"

    def __init__(
        self,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        self_condition: bool = False,
        clip_x0: bool = False,
    ) -> None:
        super().__init__()
        require(sigma_data > 0, f"diffusion.sigma_data={sigma_data} must be > 0")
        require(p_std > 0, f"diffusion.p_std={p_std} must be > 0")
        require(
            0 < sigma_min < sigma_max and math.isfinite(sigma_max),
            f"diffusion.sigma_min={sigma_min} and sigma_max={sigma_max} must have "
            "0 < sigma_min < sigma_max",
        )
        self.sigma_data = float(sigma_data)
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.self_condition = bool(self_condition)
        self.clip_x0 = bool(clip_x0)
        # no tables to keep; this follows .to(device), so a sampler knows where to draw x_T
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def prior_std(self) -> float:
        """Sampling starts from x_T = sigma_max n (Alg. 1, line 1)."""
        return self.sigma_max

    # ---- preconditioning (Table 1, eq. 7) ---------------------------------------------------
    def c_skip(self, sigma: Tensor) -> Tensor:
        """Skip scaling, Table 1: c_skip = sd^2 / (sigma^2 + sd^2)."""
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: Tensor) -> Tensor:
        """Output scaling, Table 1: c_out = sigma sd / sqrt(sigma^2 + sd^2)."""
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()

    def c_in(self, sigma: Tensor) -> Tensor:
        """Input scaling, Table 1: c_in = 1 / sqrt(sigma^2 + sd^2) (unit-variance input)."""
        return 1 / (sigma**2 + self.sigma_data**2).sqrt()

    def c_noise(self, sigma: Tensor) -> Tensor:
        """Noise conditioning, Table 1: c_noise = ln(sigma) / 4."""
        return sigma.log() / 4

    def time_input(self, sigma: Tensor) -> Tensor:
        """The `t` our networks get: 250 c_noise + 500, the span of DDPM's timesteps (see
        TIME_SCALE)."""
        return TIME_SCALE * self.c_noise(sigma) + TIME_OFFSET

    def denoise(self, net: Callable[..., Tensor], x: Tensor, sigma: Tensor, *args: Any) -> Tensor:
        """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (eq. 7), the x0 estimate.

        `net(x_in, t, *args)`: a bare network with `args` = (cond,), or one with its
        conditioning bound (no args). sigma: [B] noise levels.
        """
        sigma = _float(sigma)
        col = _column(sigma, x.ndim)
        out = net((self.c_in(col) * x).to(x.dtype), self.time_input(sigma), *args)
        return self.c_skip(col) * _float(x) + self.c_out(col) * _float(out)

    # ---- training (Table 1 "Training", eq. 8) -----------------------------------------------
    def sample_sigmas(
        self, b: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Tensor:
        """Noise distribution, Table 1: ln(sigma) ~ N(P_mean, P_std^2)."""
        z = torch.randn(b, device=device, generator=generator)
        return (self.p_mean + self.p_std * z).exp()

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """Loss weighting, Table 1: lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def training_losses(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        sigma: Tensor | None = None,
        noise: Tensor | None = None,
        loss_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-sample lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2 (eq. 8, mean over pixels).

        `model(x, t)` is the network with its conditioning bound; with self_condition
        `model(x, t, x0_estimate)` (None: no estimate), as GaussianDiffusion.training_losses
        takes it. loss_mask (1 = counts) restricts the loss to a region. Returns
        (per-sample loss [B], sigma [B]).
        """
        b = x0.shape[0]
        if sigma is None:
            sigma = self.sample_sigmas(b, x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x = x0 + _column(sigma, x0.ndim).to(x0.dtype) * noise
        if self.self_condition:
            with torch.no_grad():
                estimate = self.denoise(model, x, sigma, None).to(x.dtype)
            use = torch.rand(b, device=x0.device, generator=generator) < 0.5
            d = self.denoise(model, x, sigma, torch.where(use[:, None, None, None], estimate, 0.0))
        else:
            d = self.denoise(model, x, sigma)
        sq = (d - _float(x0)) ** 2
        if loss_mask is None:
            per_sample = sq.flatten(1).mean(1)
        else:
            m = loss_mask.expand_as(sq).flatten(1)
            per_sample = (sq.flatten(1) * m).sum(1) / m.sum(1).clamp(min=1)
        return per_sample * self.loss_weight(_float(sigma)), sigma

    def sigma_bucket_edges(self, buckets: int) -> list[float]:
        """Edges [0, ..., inf] of `buckets` noise-level buckets, each an equal share of the
        training draws (quantiles of the log-normal), for the per-bucket losses."""
        normal = torch.distributions.Normal(self.p_mean, self.p_std)
        inner = [math.exp(float(normal.icdf(torch.tensor(i / buckets)))) for i in range(1, buckets)]
        return [0.0, *inner, math.inf]

    # ---- sampling interface (what samplers and guidance call) -------------------------------
    def denoiser(self, net: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """The network as samplers call it: (x, sigma, cond) -> D(x; sigma). Guidance combines
        these outputs linearly, which is the same as combining F (D is affine in F)."""
        return lambda x, sigma, cond=None: self.denoise(net, x, sigma, cond)

    def split_prediction(self, out: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x0, eps) from the denoiser's output D at noise level t = sigma: eps = (x - D) / sigma."""
        x0 = _float(out)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
        return x0, (_float(x) - x0) / _column(_float(t), x.ndim)

    def output_from_x0(self, x0: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The denoiser output that predicts `x0`: x0 itself (D is an x0 prediction)."""
        return x0
