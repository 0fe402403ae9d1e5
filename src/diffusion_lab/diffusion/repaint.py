"""RePaint (Lugmayr et al., CVPR 2022): inpainting with any denoiser, conditional or not.

Written from the paper. At every reverse step t -> s the known region of x_s is the original
noised to level s by the forward process, the unknown region is the model's reverse step, and
the two are joined by the mask (1 = known, 0 = fill). Because the two halves are sampled
independently, the paper "resamples": it noises x_s forward again and repeats the reverse
step, so the model can harmonise the regions. With jump length j it goes back j steps at a
time instead of one; every block of j steps is done `resamples` times in all.

The steps run on a grid of timesteps (all T by default, or `steps` spaced as `spacing` says); a
reverse step between grid points samples q(x_s | x_t, x0_pred), the DDPM posterior for a
skip, and a forward jump samples q(x_t | x_s); on the full grid these are the paper's steps.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from diffusion_lab.diffusion.gaussian import DenoiseFn, GaussianDiffusion
from diffusion_lab.diffusion.noise import Noise, as_noise
from diffusion_lab.diffusion.samplers import (
    Sampler,
    StepCallback,
    TimeGrid,
    _sigma_table,
    _timestep,
    time_grid,
)
from diffusion_lab.errors import require


def repaint_schedule(num_steps: int, jump_length: int = 10, resamples: int = 10) -> list[int]:
    """The sequence of grid levels visited: level 0 is pure noise, level num_steps is the result.

    Consecutive entries differ by +1 (a reverse step) or -jump_length (a forward jump back).
    Every level k = jump_length, 2 jump_length, ... < num_steps is left by a jump back
    `resamples - 1` times before the descent goes past it.
    """
    require(num_steps >= 1, f"sampler.steps={num_steps} must be >= 1")
    require(jump_length >= 1, f"sampler.jump_length={jump_length} must be >= 1")
    require(resamples >= 1, f"sampler.resamples={resamples} must be >= 1")
    levels = [0]
    jumps_left = {k: resamples - 1 for k in range(jump_length, num_steps, jump_length)}
    k = 0
    while k < num_steps:
        k += 1
        levels.append(k)
        if jumps_left.get(k, 0) > 0:
            jumps_left[k] -= 1
            k -= jump_length
            levels.append(k)
    return levels


class RePaint(Sampler):
    """RePaint on the sampler's time grid (`steps`, `spacing`), with `jump_length` and
    `resamples` as in the paper. Needs the known image and the mask; without them
    (mask all zero) it is ancestral sampling with resampling."""

    name = "repaint"
    settings = {"steps": 250, "spacing": "linspace", "jump_length": 10, "resamples": 10}
    stochastic = True

    def __init__(self, diffusion: GaussianDiffusion, **settings) -> None:
        super().__init__(diffusion, **settings)
        o = self.options
        self.levels = repaint_schedule(len(self.grid), int(o["jump_length"]), int(o["resamples"]))

    @property
    def nfe(self) -> int:
        return sum(1 for a, b in zip(self.levels[:-1], self.levels[1:]) if b > a)

    def run(self, denoise, x, noise, callback=None, known=None, mask=None) -> Tensor:
        if known is None or mask is None:
            known, mask = torch.zeros_like(x), torch.zeros_like(x[:, :1])
        return _repaint(
            self.diffusion, denoise, known, mask, self.grid, self.levels, noise, callback, x
        )


def repaint_sample(
    diffusion: GaussianDiffusion,
    denoise: DenoiseFn,
    known: Tensor,
    mask: Tensor,
    steps: int | None = None,
    jump_length: int = 10,
    resamples: int = 10,
    generator: torch.Generator | Noise | None = None,
    callback: StepCallback | None = None,
    timesteps: Sequence[int] | None = None,
) -> Tensor:
    """Fill the pixels where mask == 0 of `known` ([B, C, H, W] in [-1, 1]).

    `denoise(x_t, t)` is any network output in the diffusion's parametrisation (conditioning
    bound already). Returns x_0 with the known pixels equal to `known` exactly.
    """
    if timesteps is not None:
        ts = list(timesteps)
        table = _sigma_table(diffusion)
        grid = TimeGrid(tuple(ts), tuple(float(table[t]) for t in ts) + (0.0,))
    else:
        grid = time_grid(diffusion, steps or diffusion.num_timesteps)
    levels = repaint_schedule(len(grid), jump_length, resamples)
    noise = as_noise(generator)
    return _repaint(diffusion, denoise, known, mask, grid, levels, noise, callback, None)


def _repaint(
    diffusion: GaussianDiffusion,
    denoise: DenoiseFn,
    known: Tensor,
    mask: Tensor,
    grid: TimeGrid,
    levels: list[int],
    noise: Noise,
    callback: StepCallback | None,
    x: Tensor | None,
) -> Tensor:
    device = known.device
    mask = mask.to(device=device, dtype=known.dtype).expand(-1, 1, -1, -1)
    if x is None:
        x = noise(known)
    step = 0
    for here, there in zip(levels[:-1], levels[1:]):
        ab_t, ab_s = grid.alpha_bar(here), grid.alpha_bar(there)
        if there < here:  # jump back: q(x_s | x_t) with s later than t in the forward process
            a = ab_s / ab_t
            x = a**0.5 * x + (1 - a) ** 0.5 * noise(x)
            continue
        t = grid.times[here]
        x0, _ = diffusion.split_prediction(denoise(x, _timestep(t, x)), x, _timestep(t, x))
        # unknown region: the posterior q(x_s | x_t, x0) for a step from t to s
        a = ab_t / ab_s
        var_t, var_s = grid.std(here) ** 2, grid.std(there) ** 2
        coef_x0 = ab_s**0.5 * (1 - a) / var_t
        coef_xt = a**0.5 * var_s / var_t
        unknown = coef_x0 * x0 + coef_xt * x
        clean = there == len(grid)
        if not clean:
            unknown = unknown + (var_s / var_t * (1 - a)) ** 0.5 * noise(x)
        # known region: the original, noised to level s (exactly the original at the end)
        known_s = known if clean else ab_s**0.5 * known + var_s**0.5 * noise(x)
        x = mask * known_s + (1 - mask) * unknown
        if callback is not None:
            callback(step, t, x, x0)
        step += 1
    return x
