"""Inpainting metrics, computed on the pixels to fill only (mask == 0; 1 = known).

- Pattern set (two colours): masked-pixel accuracy. Every filled pixel is snapped to the
  nearer of the two colours and compared with the ground truth.
- Any other images: masked-region MSE and PSNR (images in [-1, 1], PSNR on a [0, 1] scale).
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from diffusion_lab.data.patterns import BLUE, RED


def _model_range(rgb: Sequence[int]) -> Tensor:
    return torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1


PALETTE = torch.stack([_model_range(RED), _model_range(BLUE)])  # [2, 3] in [-1, 1]


def snap(images: Tensor, palette: Tensor = PALETTE) -> Tensor:
    """Index [B, H, W] of the nearest palette colour of every pixel of [B, C, H, W] images."""
    p = palette.to(images.device, images.dtype)
    d = ((images[:, None] - p[None, :, :, None, None]) ** 2).sum(2)  # [B, K, H, W]
    return d.argmin(1)


def masked_pixel_correct(
    result: Tensor, truth: Tensor, mask: Tensor, palette: Tensor = PALETTE
) -> tuple[Tensor, Tensor]:
    """Per image: (number of correct filled pixels, number of filled pixels), both [B]."""
    unknown = mask[:, 0] < 0.5
    same = snap(result.float(), palette) == snap(truth.float(), palette)
    return (same & unknown).flatten(1).sum(1), unknown.flatten(1).sum(1)


def masked_pixel_accuracy(
    result: Tensor, truth: Tensor, mask: Tensor, palette: Tensor = PALETTE
) -> float:
    """Share of filled pixels whose snapped colour equals the ground truth (pooled over the batch)."""
    correct, total = masked_pixel_correct(result, truth, mask, palette)
    return float(correct.sum()) / max(1, int(total.sum()))


def masked_mse_psnr(result: Tensor, truth: Tensor, mask: Tensor) -> tuple[float, float]:
    """MSE on [-1, 1] images over the filled pixels, and PSNR (dB) of the same region on [0, 1]."""
    unknown = (mask < 0.5).expand_as(truth).float()
    n = unknown.sum().clamp(min=1)
    mse = float((((result.float() - truth.float()) ** 2) * unknown).sum() / n)
    mse01 = mse / 4  # [-1, 1] -> [0, 1] scales squared errors by 1/4
    psnr = float("inf") if mse01 == 0 else float(-10 * torch.log10(torch.tensor(mse01)))
    return mse, psnr


def grouped_accuracy(
    correct: Tensor, total: Tensor, groups: Tensor, names: Sequence[str]
) -> dict[str, float]:
    """Pooled accuracy per group (e.g. pattern family or mask kind); groups index into names."""
    out = {}
    for i, name in enumerate(names):
        sel = groups == i
        if sel.any():
            out[name] = float(correct[sel].sum()) / max(1, int(total[sel].sum()))
    return out
