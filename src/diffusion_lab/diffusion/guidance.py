"""Guidance: build the `denoise(x_t, t)` function a sampler calls from a conditional model."""

from collections.abc import Callable

from torch import Tensor

from diffusion_lab.diffusion.gaussian import DenoiseFn, GaussianDiffusion


def classifier_free(cond_fn: DenoiseFn, uncond_fn: DenoiseFn, scale: float) -> DenoiseFn:
    """Ho & Salimans (2022): out = out_uncond + w * (out_cond - out_uncond).

    The combination is linear in the network output, so it is the same whether the network
    predicts eps, x0 or v. w=0 and w=1 call only one branch, so they reproduce unconditional
    and conditional sampling exactly (and cost one forward pass, not two).
    """
    if scale == 0:
        return uncond_fn
    if scale == 1:
        return cond_fn

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        out_u = uncond_fn(x, t)
        return out_u + scale * (cond_fn(x, t) - out_u)

    return denoise


def bind(model: Callable[..., Tensor], cond) -> DenoiseFn:
    """model(x_t, t, cond) -> denoise(x_t, t)."""
    return lambda x, t: model(x, t, cond)


def keep_known(
    diffusion: GaussianDiffusion, denoise: DenoiseFn, known: Tensor, mask: Tensor
) -> DenoiseFn:
    """Inpainting with a mask-conditioned model: its predicted x0 takes the known pixels
    (mask 1 = known) at every step. A model trained with the loss on the unknown pixels only
    predicts anything there; replacing them keeps x_t's known region what training showed it,
    the original plus noise, and costs nothing."""

    def denoised(x: Tensor, t: Tensor) -> Tensor:
        x0, _ = diffusion.split_prediction(denoise(x, t), x, t)
        return diffusion.output_from_x0(mask * known + (1 - mask) * x0, x, t)

    return denoised
