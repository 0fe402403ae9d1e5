"""Guidance by a differentiable score of the predicted clean image (e.g. CLIP similarity).

At every reverse step the network's predicted x0 is nudged along the gradient of
`score_fn(x0) -> [B]`, and the sampler continues from the nudged x0 (the network output is
rewritten in the model's own parametrisation, so DDPM and DDIM both use it unchanged). No
Lightning, no CLIP: the scorer is any function, which keeps this usable from a notebook.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_lab.diffusion.gaussian import DenoiseFn, GaussianDiffusion
from diffusion_lab.errors import require

ScoreFn = Callable[[Tensor], Tensor]


def score_guided(
    diffusion: GaussianDiffusion,
    denoise: DenoiseFn,
    score_fn: ScoreFn,
    scale: float,
    normalize: bool = True,
) -> DenoiseFn:
    """denoise(x_t, t) whose predicted x0 is moved by `scale` along grad score_fn(x0).

    normalize=True divides each sample's gradient by its RMS, so `scale` is a step in pixel
    units of the [-1, 1] range (CLIP gradients w.r.t. pixels are tiny and vary between models).
    Works inside torch.no_grad(); not inside torch.inference_mode().
    """
    require(scale >= 0, f"guidance scale must be >= 0, got {scale}")
    if scale == 0:
        return denoise

    def guided(x: Tensor, t: Tensor) -> Tensor:
        x0, _ = diffusion.split_prediction(denoise(x, t), x, t)
        with torch.enable_grad():
            x0_var = x0.detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(score_fn(x0_var).sum(), x0_var)
        if normalize:
            rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12)
            grad = grad / rms.view(-1, *([1] * (grad.ndim - 1)))
        x0 = x0 + scale * grad
        if diffusion.clip_x0:
            x0 = x0.clamp(-1, 1)
        return diffusion.output_from_x0(x0, x, t)

    return guided
