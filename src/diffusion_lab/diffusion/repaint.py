"""RePaint (Lugmayr et al., CVPR 2022): inpainting with any denoiser, conditional or not.

Written from the paper. At every reverse step t -> s the known region of x_s is the original
noised to level s by the forward process, the unknown region is the model's reverse step, and
the two are joined by the mask (1 = known, 0 = fill). Because the two halves are sampled
independently, the paper "resamples": it noises x_s forward again and repeats the reverse
step, so the model can harmonise the regions. With jump length j it goes back j steps at a
time instead of one; every block of j steps is done `resamples` times in all.

The steps run on a grid of timesteps (all T by default, or `steps` evenly spaced ones); a
reverse step between grid points samples q(x_s | x_t, x0_pred), the DDPM posterior for a
skip, and a forward jump samples q(x_t | x_s); on the full grid these are the paper's steps.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from diffusion_lab.diffusion.gaussian import DenoiseFn, GaussianDiffusion
from diffusion_lab.diffusion.samplers import StepCallback, ddim_timesteps
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


def _alpha_bar(diffusion: GaussianDiffusion, t: int) -> float:
    return 1.0 if t < 0 else float(diffusion.alpha_bar[t])


def repaint_sample(
    diffusion: GaussianDiffusion,
    denoise: DenoiseFn,
    known: Tensor,
    mask: Tensor,
    steps: int | None = None,
    jump_length: int = 10,
    resamples: int = 10,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    timesteps: Sequence[int] | None = None,
) -> Tensor:
    """Fill the pixels where mask == 0 of `known` ([B, C, H, W] in [-1, 1]).

    `denoise(x_t, t)` is any network output in the diffusion's parametrisation (conditioning
    bound already). Returns x_0 with the known pixels equal to `known` exactly.
    """
    T = diffusion.num_timesteps
    ts = list(timesteps) if timesteps is not None else ddim_timesteps(T, steps or T)
    grid = ts + [-1]  # level k has time grid[k]; the last level is the clean image
    device = known.device
    mask = mask.to(device=device, dtype=known.dtype).expand(-1, 1, -1, -1)
    b = known.shape[0]

    def randn() -> Tensor:
        return torch.randn(known.shape, device=device, generator=generator, dtype=known.dtype)

    x = randn()
    levels = repaint_schedule(len(ts), jump_length, resamples)
    step = 0
    for here, there in zip(levels[:-1], levels[1:]):
        t, s = grid[here], grid[there]
        ab_t, ab_s = _alpha_bar(diffusion, t), _alpha_bar(diffusion, s)
        if there < here:  # jump back: q(x_s | x_t) with s later than t in the forward process
            a = ab_s / ab_t
            x = a**0.5 * x + (1 - a) ** 0.5 * randn()
            continue
        tt = torch.full((b,), t, device=device, dtype=torch.long)
        x0, _ = diffusion.split_prediction(denoise(x, tt), x, tt)
        # unknown region: the posterior q(x_s | x_t, x0) for a step from t to s
        a = ab_t / ab_s
        coef_x0 = ab_s**0.5 * (1 - a) / (1 - ab_t)
        coef_xt = a**0.5 * (1 - ab_s) / (1 - ab_t)
        var = (1 - ab_s) / (1 - ab_t) * (1 - a)
        unknown = coef_x0 * x0 + coef_xt * x
        if s >= 0:
            unknown = unknown + var**0.5 * randn()
        # known region: the original, noised to level s (exactly the original at s = -1)
        known_s = known if s < 0 else ab_s**0.5 * known + (1 - ab_s) ** 0.5 * randn()
        x = mask * known_s + (1 - mask) * unknown
        if callback is not None:
            callback(step, t, x, x0)
        step += 1
    return x
