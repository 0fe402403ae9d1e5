"""Reverse-process samplers, each on its own time grid.

Every sampler takes `denoise(x_t, t) -> network output` (conditioning and guidance already
bound, see `guidance.py`) and the diffusion, so the same code serves every model, objective
and kind of guidance. A sampler walks a grid of N timesteps t_0 > ... > t_{N-1}, then the
clean image; `step(i)` goes from grid point i to i + 1 and its docstring gives the update.

Notation (all samplers): the forward process is x_t = a_t x0 + s_t eps with a_t = sqrt(ab_t),
s_t = sqrt(1 - ab_t). The same noise level as Karras et al. (2022, "EDM") write it is
sigma_t = s_t / a_t, where x_t / a_t = x0 + sigma_t eps ("variance exploding"); there the
probability-flow ODE is d(x/a)/d sigma = (x/a - D) / sigma, with D the denoiser, the
network's prediction of x0. The state a sampler keeps, and what the network sees and a
callback gets, is always x_t itself. The clean end of the grid has sigma = 0.

Time grids (`spacing`), as diffusers names them (Lin et al. 2024, Table 2):
  linspace  round(linspace(T-1, 0, N)): the first and last timestep included (the default)
  leading   (N-1) k, ..., k, 0 with k = T // N
  trailing  round(T - i T / N) - 1 for i = 0..N-1: T-1 down to about T / N - 1
  karras    Karras et al. (2022) eq. 5 with rho = 7: sigma_i = (sigma_max^(1/rho) +
            i / (N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho between sigma(T-1) and
            sigma(0); the network sees the fractional timestep whose log sigma that is.

EDM models (diffusion.formulation=edm, `edm.EDMDiffusion`): the process is variance
exploding, x = x0 + sigma eps, so a = 1 and s = sigma in every update below, and the same
equations are Karras et al.'s (and k-diffusion's) as written. The grid is the karras one
between diffusion.sigma_min and sigma_max, the time the denoiser gets is sigma itself (its
preconditioning turns that into the network's input), and sampling starts from
x_T = sigma_max eps. The ODE/SDE solvers (euler, heun, dpmpp_2m, dpmpp_2m_sde) and onepass
take either formulation; ddpm, ddim and repaint step through DDPM's discrete alphas_cumprod
and are DDPM-only.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from diffusion_lab.diffusion.edm import FORMULATIONS
from diffusion_lab.diffusion.gaussian import DenoiseFn, GaussianDiffusion
from diffusion_lab.diffusion.noise import Noise, as_noise
from diffusion_lab.errors import UserError, require

if TYPE_CHECKING:
    from diffusion_lab.diffusion import Diffusion

SPACINGS = ("linspace", "leading", "trailing", "karras")
KARRAS_RHO = 7.0

# called after every step with (step index, t, x_t after the step, predicted x0)
StepCallback = Callable[[int, float, Tensor, Tensor], None]


# ---- time grids ----------------------------------------------------------------------------
def _sigma_table(diffusion: GaussianDiffusion) -> Tensor:
    """sigma_t for t = 0..T-1 in float64 on the CPU (from the betas, as the diffusion's own
    tables are)."""
    alpha_bar = torch.cumprod(1 - diffusion.betas.detach().double().cpu(), 0)
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def sigma_to_t(sigma: float, log_sigmas: Tensor) -> float:
    """The fractional timestep of noise level `sigma`: log sigma interpolated linearly between
    the neighbouring integer timesteps (diffusers' `_sigma_to_t`)."""
    log_sigma = math.log(max(sigma, 1e-10))
    low = int((log_sigmas <= log_sigma).sum().item()) - 1
    low = min(max(low, 0), len(log_sigmas) - 2)
    lo, hi = float(log_sigmas[low]), float(log_sigmas[low + 1])
    w = min(max((lo - log_sigma) / (lo - hi), 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)


def uniform_timesteps(num_timesteps: int, steps: int, spacing: str = "linspace") -> list[int]:
    """`steps` integer timesteps from high to low, spaced as `spacing` says (not karras)."""
    T = num_timesteps
    require(
        isinstance(steps, int) and 1 <= steps <= T,
        f"sampler.steps={steps} must be between 1 and schedule.timesteps={T}",
    )
    if spacing == "linspace":
        ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().tolist()
    elif spacing == "leading":
        ts = [i * (T // steps) for i in range(steps)]
    elif spacing == "trailing":
        ts = [round(T - i * T / steps) - 1 for i in range(steps)]
    else:
        raise UserError(f"sampler.spacing={spacing!r} is not one of {list(SPACINGS[:3])}")
    return sorted(set(ts), reverse=True)


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` evenly spaced timesteps from T-1 down to 0 (the linspace grid)."""
    return uniform_timesteps(num_timesteps, steps, "linspace")


@dataclass(frozen=True)
class TimeGrid:
    """The timesteps a sampler visits and their noise levels.

    times: N network timesteps, high to low (ints; floats on a karras grid).
    sigmas: the N noise levels sigma_t at `times`, then 0 (the clean image): N + 1 entries.
    variance_preserving: False for an EDM model, whose x = x0 + sigma eps (a = 1, s = sigma).
    """

    times: tuple[float, ...]
    sigmas: tuple[float, ...]
    variance_preserving: bool = True

    def __len__(self) -> int:
        return len(self.times)

    def alpha(self, i: int) -> float:
        """a = sqrt(ab) at grid point i (1 at the clean end, i = N)."""
        if not self.variance_preserving:
            return 1.0
        return 1.0 / math.sqrt(1.0 + self.sigmas[i] ** 2)

    def std(self, i: int) -> float:
        """s = sqrt(1 - ab) at grid point i (0 at the clean end)."""
        if not self.variance_preserving:
            return self.sigmas[i]
        return self.sigmas[i] / math.sqrt(1.0 + self.sigmas[i] ** 2)

    def alpha_bar(self, i: int) -> float:
        if not self.variance_preserving:
            return 1.0
        return 1.0 / (1.0 + self.sigmas[i] ** 2)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int) -> list[float]:
    """Karras et al. (2022) eq. 5 with rho = 7: `steps` noise levels from sigma_max down to
    sigma_min, dense near sigma_min."""
    lo, hi = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64).tolist()
    return [(hi + r * (lo - hi)) ** KARRAS_RHO for r in ramp]


def _edm_grid(diffusion, steps: int, spacing: str) -> TimeGrid:
    """An EDM model's grid: karras sigmas between its sigma_min and sigma_max, t = sigma."""
    require(
        spacing == "karras",
        f"sampler.spacing={spacing!r}: an edm model samples on the karras grid between "
        "diffusion.sigma_min and diffusion.sigma_max; choices: ['karras']",
    )
    require(
        isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1,
        f"sampler.steps={steps} must be an integer >= 1",
    )
    sigmas = karras_sigmas(diffusion.sigma_min, diffusion.sigma_max, steps)
    return TimeGrid(tuple(sigmas), tuple(sigmas) + (0.0,), variance_preserving=False)


def time_grid(diffusion: "Diffusion", steps: int, spacing: str = "linspace") -> TimeGrid:
    """The grid of `steps` timesteps for `spacing` (see the module docstring)."""
    require(spacing in SPACINGS, f"sampler.spacing={spacing!r} is not one of {list(SPACINGS)}")
    if diffusion.formulation == "edm":
        return _edm_grid(diffusion, steps, spacing)
    T = diffusion.num_timesteps
    table = _sigma_table(diffusion)
    if spacing != "karras":
        ts = uniform_timesteps(T, steps, spacing)
        return TimeGrid(tuple(ts), tuple(float(table[t]) for t in ts) + (0.0,))
    require(
        isinstance(steps, int) and 1 <= steps <= T,
        f"sampler.steps={steps} must be between 1 and schedule.timesteps={T}",
    )
    sigmas = karras_sigmas(float(table[0]), float(table[-1]), steps)
    log_table = table.log()
    return TimeGrid(tuple(sigma_to_t(s, log_table) for s in sigmas), tuple(sigmas) + (0.0,))


def _timestep(t: float, like: Tensor) -> Tensor:
    """t for every image of the batch: long for grid points on the integers, else float."""
    if isinstance(t, int):
        return torch.full((like.shape[0],), t, device=like.device, dtype=torch.long)
    return torch.full((like.shape[0],), t, device=like.device, dtype=torch.float32)


# ---- samplers ------------------------------------------------------------------------------
class Sampler:
    """A reverse process on its own time grid.

    Subclasses set `name`, `settings` (config key -> default; `steps: None` means all T) and
    `step`. The settings are checked when the sampler is made (`make_sampler`), before any
    network call. `run` starts from x_T and calls `step` for every grid point.
    `formulations`: the diffusion formulations it can sample (see the module docstring).
    """

    name: ClassVar[str]
    settings: ClassVar[dict[str, Any]] = {"steps": 50, "spacing": "linspace"}
    stochastic: ClassVar[bool] = False
    evals_per_step: ClassVar[int] = 1
    formulations: ClassVar[tuple[str, ...]] = ("ddpm",)

    def __init__(self, diffusion: "Diffusion", **settings: Any) -> None:
        self.diffusion = diffusion
        defaults = dict(self.settings)
        if diffusion.formulation == "edm" and "spacing" in defaults:
            defaults["spacing"] = "karras"  # the only grid an EDM model has
        self.options = {**defaults, **settings}
        steps = self.options.get("steps")
        if "steps" in self.settings:
            if steps is None and diffusion.formulation == "ddpm":
                steps = diffusion.num_timesteps
            self.options["steps"] = steps
            self.grid = time_grid(diffusion, steps, self.options.get("spacing", "linspace"))
        self.reset()

    def reset(self) -> None:
        """Forget the state of a previous run (multistep solvers keep earlier predictions)."""

    @property
    def timesteps(self) -> list[float]:
        return list(self.grid.times)

    @property
    def nfe(self) -> int:
        """Network evaluations per image (Heun's last step, to sigma = 0, is a single one)."""
        return len(self.grid) * self.evals_per_step

    def predict(self, denoise: DenoiseFn, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """(x0, eps) the network predicts at grid point i."""
        t = _timestep(self.grid.times[i], x)
        return self.diffusion.split_prediction(denoise(x, t), x, t)

    def step(self, denoise: DenoiseFn, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        """x at grid point i -> (x at grid point i + 1, the predicted x0)."""
        raise NotImplementedError

    def run(
        self,
        denoise: DenoiseFn,
        x: Tensor,
        noise: Noise,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """The sample reached from x (= x_T, pure noise) through every grid point."""
        self.reset()
        for i in range(len(self.grid)):
            x, x0 = self.step(denoise, x, i, noise)
            if callback is not None:
                callback(i, self.grid.times[i], x, x0)
        return x


class DDPM(Sampler):
    """Ancestral sampling (Ho et al. 2020): x_s ~ q(x_s | x_t, x0 = D(x_t)), the posterior of
    the forward process given the predicted x0 (eq. 6-7). On all T steps (the default) this
    is the paper's sampler; on a subset it is the posterior for the skip (DDIM with eta = 1).

        x_s = a_s (1 - a_t^2/a_s^2) / s_t^2 x0 + (a_t/a_s) s_s^2 / s_t^2 x_t + sqrt(var) z,
        var = s_s^2 / s_t^2 (1 - a_t^2 / a_s^2)        (no noise at the last step)
    """

    name = "ddpm"
    settings = {"steps": None, "spacing": "linspace"}
    stochastic = True

    def step(self, denoise: DenoiseFn, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        g = self.grid
        x0, _ = self.predict(denoise, x, i)
        ab_t, ab_s = g.alpha_bar(i), g.alpha_bar(i + 1)
        ratio = ab_t / ab_s  # the alpha of the skip t -> s
        var_t, var_s = g.std(i) ** 2, g.std(i + 1) ** 2
        mean = (math.sqrt(ab_s) * (1 - ratio) / var_t) * x0 + (math.sqrt(ratio) * var_s / var_t) * x
        if i + 1 < len(g):
            mean = mean + math.sqrt(var_s / var_t * (1 - ratio)) * noise(x)
        return mean, x0


class DDIM(Sampler):
    """DDIM (Song et al. 2021, eq. 12): with eps = (x_t - a_t x0) / s_t,

        x_s = a_s x0 + sqrt(s_s^2 - sigma^2) eps + sigma z,
        sigma = eta sqrt(s_s^2 / s_t^2 (1 - a_t^2 / a_s^2)).

    eta = 0 is deterministic (the same update as `euler`); eta = 1 on all T steps is DDPM.
    """

    name = "ddim"
    settings = {"steps": 50, "spacing": "linspace", "eta": 0.0}

    def __init__(self, diffusion: GaussianDiffusion, **settings: Any) -> None:
        super().__init__(diffusion, **settings)
        self.eta = float(self.options["eta"])
        self.stochastic = self.eta > 0

    def step(self, denoise: DenoiseFn, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        g = self.grid
        x0, eps = self.predict(denoise, x, i)
        ab_t, ab_s = g.alpha_bar(i), g.alpha_bar(i + 1)
        var_t, var_s = g.std(i) ** 2, g.std(i + 1) ** 2
        sigma = self.eta * math.sqrt(max(var_s / var_t * (1 - ab_t / ab_s), 0.0))
        x = math.sqrt(ab_s) * x0 + math.sqrt(max(var_s - sigma**2, 0.0)) * eps
        if sigma > 0 and i + 1 < len(g):
            x = x + sigma * noise(x)
        return x, x0


class Euler(Sampler):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 1 without its
    second-order correction; diffusers' EulerDiscreteScheduler):

        d = (x_t/a_t - x0) / sigma_t,    x_s/a_s = x_t/a_t + (sigma_s - sigma_t) d.

    Written out this is DDIM with eta = 0 (Song et al. 2021, Sec. 4.3 make the same point).
    """

    name = "euler"
    formulations = FORMULATIONS

    def step(self, denoise: DenoiseFn, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        g = self.grid
        x0, _ = self.predict(denoise, x, i)
        return _euler(g, i, x, x0), x0


def _euler(g: TimeGrid, i: int, x: Tensor, x0: Tensor) -> Tensor:
    """One Euler step of the ODE from grid point i to i + 1, in x_t's own scale:
    x_s = (s_s / s_t) x_t + a_s (1 - sigma_s / sigma_t) x0."""
    ratio = g.sigmas[i + 1] / g.sigmas[i]
    return (g.std(i + 1) / g.std(i)) * x + (g.alpha(i + 1) * (1 - ratio)) * x0


class Heun(Sampler):
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1 with
    S_churn = 0; diffusers' HeunDiscreteScheduler): an Euler step to sigma_s, a second
    network call there, and the average of the two slopes,

        d   = (x_t/a_t - D(x_t, t)) / sigma_t,       y/a_s = x_t/a_t + (sigma_s - sigma_t) d,
        d'  = (y/a_s - D(y, s)) / sigma_s,           x_s/a_s = x_t/a_t + (sigma_s - sigma_t) (d + d') / 2.

    The last step, to sigma = 0, is the Euler step (there is no slope at sigma = 0), so N
    grid points cost 2 N - 1 network calls.
    """

    name = "heun"
    evals_per_step = 2
    formulations = FORMULATIONS

    @property
    def nfe(self) -> int:
        return 2 * len(self.grid) - 1

    def step(self, denoise: DenoiseFn, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        g = self.grid
        x0, _ = self.predict(denoise, x, i)
        y = _euler(g, i, x, x0)
        if i + 1 == len(g):
            return y, x0
        y0, _ = self.predict(denoise, y, i + 1)
        a_t, a_s, sig_t, sig_s = g.alpha(i), g.alpha(i + 1), g.sigmas[i], g.sigmas[i + 1]
        d = (x / a_t - x0) / sig_t
        d2 = (y / a_s - y0) / sig_s
        return a_s * (x / a_t + (sig_s - sig_t) * 0.5 * (d + d2)), x0


class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2), the multistep second-order
    solver of the ODE in data-prediction form; diffusers' DPMSolverMultistepScheduler with
    algorithm_type="dpmsolver++", solver_order=2. With lambda = log(a / s) = -log sigma and
    h = lambda_s - lambda_t:

        x_s = (s_s / s_t) x_t - a_s (e^{-h} - 1) D,
        D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev,   r = h_prev / h,

    and D = x0_t (first order) at the first step and at the last one (to sigma = 0, where
    h is infinite and the step returns x0_t).
    """

    name = "dpmpp_2m"
    formulations = FORMULATIONS

    def reset(self) -> None:
        self.prev: tuple[Tensor, float] | None = None  # (x0, h) of the previous step

    def _data_term(self, x0: Tensor, i: int) -> tuple[Tensor, float]:
        """(D, h) for the step from grid point i, and remember x0 for the next one."""
        g = self.grid
        last = g.sigmas[i + 1] == 0
        h = math.inf if last else math.log(g.sigmas[i] / g.sigmas[i + 1])
        data = x0
        if self.prev is not None and not last:
            x0_prev, h_prev = self.prev
            r = h_prev / h
            data = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        self.prev = (x0, h)
        return data, h

    def step(self, denoise: DenoiseFn, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        g = self.grid
        x0, _ = self.predict(denoise, x, i)
        data, h = self._data_term(x0, i)
        if math.isinf(h):
            return data, x0
        return (g.std(i + 1) / g.std(i)) * x - g.alpha(i + 1) * math.expm1(-h) * data, x0


class DPMSolverPP2MSDE(DPMSolverPP2M):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Sec. 5 / App. B; diffusers'
    algorithm_type="sde-dpmsolver++", midpoint): the same data term D, with noise added back,

        x_s = (s_s / s_t) e^{-h} x_t + a_s (1 - e^{-2h}) D + s_s sqrt(1 - e^{-2h}) z.
    """

    name = "dpmpp_2m_sde"
    stochastic = True

    def step(self, denoise: DenoiseFn, x: Tensor, i: int, noise: Noise) -> tuple[Tensor, Tensor]:
        g = self.grid
        x0, _ = self.predict(denoise, x, i)
        data, h = self._data_term(x0, i)
        if math.isinf(h):
            return data, x0
        decay = math.exp(-h)
        x = (g.std(i + 1) / g.std(i) * decay) * x + (g.alpha(i + 1) * -math.expm1(-2 * h)) * data
        return x + (g.std(i + 1) * math.sqrt(-math.expm1(-2 * h))) * noise(x), x0


class OnePass(Sampler):
    """Inpainting in `passes` network calls: the x0 a mask-conditioned model predicts at
    t = T-1 (EDM: sigma_max) from pure noise; with self-conditioning each further pass sees
    the previous x0."""

    name = "onepass"
    settings = {"passes": 1}
    formulations = FORMULATIONS

    @property
    def top(self) -> float:
        """The noisiest time: T - 1, or sigma_max for an EDM model."""
        d = self.diffusion
        return d.sigma_max if d.formulation == "edm" else d.num_timesteps - 1

    @property
    def timesteps(self) -> list[float]:
        return [self.top] * int(self.options["passes"])

    @property
    def nfe(self) -> int:
        return int(self.options["passes"])

    def run(self, denoise, x, noise, callback=None) -> Tensor:
        t = _timestep(self.top, x)
        x0 = x
        for i in range(int(self.options["passes"])):
            x0, _ = self.diffusion.split_prediction(denoise(x, t), x, t)
            if callback is not None:
                callback(i, self.top, x0, x0)
        return x0


# ---- registry and settings check -----------------------------------------------------------
def _repaint_class():
    from diffusion_lab.diffusion.repaint import RePaint

    return RePaint


def sampler_classes() -> dict[str, type[Sampler]]:
    classes = [DDPM, DDIM, Euler, Heun, DPMSolverPP2M, DPMSolverPP2MSDE, _repaint_class(), OnePass]
    return {c.name: c for c in classes}


SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_2m_sde", "repaint", "onepass")
ODE_SOLVERS = ("euler", "heun", "dpmpp_2m")

# a key of another sampler at this value asks for nothing (a setting inherited from the
# configured sampler, e.g. ddim's eta: 0.0), so a sampler without that key ignores it
_NEUTRAL = {"eta": 0.0, "resamples": 1, "passes": 1}

_WHAT_KEYS_ASK = {
    "eta": "stochastic DDIM steps (eta > 0)",
    "jump_length": "RePaint's resampling",
    "resamples": "RePaint's resampling",
    "passes": "one-pass refinement",
    "steps": "a time grid",
    "spacing": "a time grid",
}


def sampler_settings(options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, settings) from a `sampler` config, checked: a known name and only keys that
    sampler has (or another sampler's keys at values that ask for nothing). The range of
    `steps` is checked when the grid is made."""
    opts = dict(options)
    name = opts.pop("name", "ddim")
    classes = sampler_classes()
    require(name in classes, f"sampler.name={name!r} is not one of {list(classes)}")
    own = classes[name].settings
    resampling_off = opts.get("resamples", 1) == 1
    out: dict[str, Any] = {}
    for key, value in opts.items():
        if key in own:
            out[key] = value
        elif (key in _NEUTRAL and value == _NEUTRAL[key]) or (
            key == "jump_length" and resampling_off
        ):
            continue
        elif key in _WHAT_KEYS_ASK:
            owners = [c for c, k in classes.items() if key in k.settings]
            raise UserError(
                f"sampler.{key}={value}: {name} cannot do {_WHAT_KEYS_ASK[key]} ({key} is a "
                f"setting of {', '.join(owners)}); {name}'s settings: {', '.join(own)}"
            )
        else:
            raise UserError(
                f"sampler.{key} is not a setting of {name}; its settings: {', '.join(own)}"
            )
    steps = out.get("steps")
    require(
        steps is None or (isinstance(steps, int) and not isinstance(steps, bool)),
        f"sampler.steps={steps!r} must be an integer",
    )
    if "spacing" in out:
        require(
            out["spacing"] in SPACINGS,
            f"sampler.spacing={out['spacing']!r} is not one of {list(SPACINGS)}",
        )
    if "eta" in out:
        require(
            isinstance(out["eta"], int | float) and out["eta"] >= 0,
            f"sampler.eta={out['eta']} must be a number >= 0",
        )
    if "passes" in out:
        require(
            isinstance(out["passes"], int) and out["passes"] >= 1,
            f"sampler.passes={out['passes']} must be an integer >= 1",
        )
    return name, out


def check_formulation(diffusion: "Diffusion", name: str) -> None:
    """Sampler `name` can sample this diffusion's formulation (one line naming the choices)."""
    classes = sampler_classes()
    require(name in classes, f"sampler.name={name!r} is not one of {list(classes)}")
    formulation = diffusion.formulation
    if formulation in classes[name].formulations:
        return
    choices = [n for n, c in classes.items() if formulation in c.formulations]
    raise UserError(
        f"sampler.name={name} is DDPM-only (it steps through the discrete alphas_cumprod); a "
        f"diffusion.formulation={formulation} model samples with one of {choices}"
    )


def make_sampler(diffusion: "Diffusion", options: Mapping[str, Any] | None = None) -> Sampler:
    """The sampler a `sampler` config names (`name` plus its settings), checked before use."""
    name, settings = sampler_settings(options or {})
    check_formulation(diffusion, name)
    return sampler_classes()[name](diffusion, **settings)


# ---- functions (the samplers as one call) --------------------------------------------------
def _start(diffusion, shape, noise, x_T) -> Tensor:
    if x_T is not None:
        return x_T
    like = torch.empty(tuple(shape), device=diffusion.device)
    return diffusion.prior_std * noise(like)


def sample(
    diffusion: "Diffusion",
    denoise: DenoiseFn,
    shape: Sequence[int],
    name: str = "ddim",
    generator: torch.Generator | Noise | None = None,
    callback: StepCallback | None = None,
    x_T: Tensor | None = None,
    **settings: Any,
) -> Tensor:
    """Sample with the sampler a config names (`sampler.name` and its settings, e.g. steps,
    spacing, eta). `generator`: a torch.Generator (the whole batch from it) or a Noise
    source such as ImageNoise (each image from its own seed)."""
    sampler = make_sampler(diffusion, {"name": name, **settings})
    noise = as_noise(generator)
    return sampler.run(denoise, _start(diffusion, shape, noise, x_T), noise, callback)


def ddpm_sample(
    diffusion: GaussianDiffusion,
    denoise: DenoiseFn,
    shape: Sequence[int],
    generator: torch.Generator | Noise | None = None,
    x_T: Tensor | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Ancestral sampling with the posterior variance of Ho et al. (2020), all T steps."""
    return sample(diffusion, denoise, shape, "ddpm", generator, callback, x_T)


def ddim_sample(
    diffusion: GaussianDiffusion,
    denoise: DenoiseFn,
    shape: Sequence[int],
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | Noise | None = None,
    x_T: Tensor | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021). eta=0 is deterministic; eta=1 with all T steps is DDPM."""
    return sample(diffusion, denoise, shape, "ddim", generator, callback, x_T, steps=steps, eta=eta)
