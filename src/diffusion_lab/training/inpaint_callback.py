"""Inpainting during training: a validation callback that inpaints a fixed masked batch and
logs masked-pixel accuracy (or masked MSE / PSNR) and an image panel.

Mask convention: 1 = known pixel, 0 = pixel to fill.
"""

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from diffusion_lab.data.datamodules import PatternDataModule
from diffusion_lab.data.loader import to_model_range
from diffusion_lab.errors import require
from diffusion_lab.metrics.inpainting import (
    grouped_accuracy,
    masked_mse_psnr,
    masked_pixel_correct,
)
from diffusion_lab.training.callbacks import due, periodic_name, save_grid


def masked_input(known: Tensor, mask: Tensor) -> Tensor:
    """For display: the known pixels, mid-grey where the model has to fill (images in [-1, 1])."""
    return known * mask


def panel_rows(columns: list[Tensor]) -> Tensor:
    """Interleave columns (each [B, C, H, W] in [-1, 1], C 1 or 3) into rows of a grid, in [0, 1]."""
    c = max(col.shape[1] for col in columns)
    cols = [col.float().cpu().expand(-1, c, -1, -1) for col in columns]
    return (torch.stack(cols, 1).flatten(0, 1) + 1) / 2


def mask_as_image(mask: Tensor) -> Tensor:
    """1 (known) -> white, 0 (fill) -> black, in [-1, 1]."""
    return mask.float() * 2 - 1


def score(
    result: Tensor,
    truth: Tensor,
    mask: Tensor,
    two_colour: bool,
    families: Tensor | None = None,
    family_names: tuple[str, ...] = (),
    kinds: Tensor | None = None,
    kind_names: tuple[str, ...] = (),
) -> dict[str, float]:
    """Accuracy overall / per family / per mask kind for the pattern set; else MSE and PSNR."""
    if not two_colour:
        mse, psnr = masked_mse_psnr(result, truth, mask)
        return {"mse": mse, "psnr": psnr}
    correct, total = masked_pixel_correct(result, truth, mask)
    out = {"acc": float(correct.sum()) / max(1, int(total.sum()))}
    if families is not None:
        for k, v in grouped_accuracy(correct, total, families.cpu(), family_names).items():
            out[f"acc_family/{k}"] = v
    if kinds is not None:
        for k, v in grouped_accuracy(correct, total, kinds.cpu(), kind_names).items():
            out[f"acc_mask/{k}"] = v
    return out


class InpaintValidation(pl.Callback):
    """For a mask-conditioned model: inpaint a fixed batch of masked validation images every
    `every_n_epochs` epochs with each of `samplers` ("onepass", or "configured" for the
    module's own sampler), log val/inpaint_<sampler>_acc (per family and per mask kind too)
    on the pattern set, val/inpaint_<sampler>_mse and _psnr elsewhere, and an image panel
    (original | masked input | mask | one column per sampler) to TensorBoard and PNG.
    Does nothing for models that are not mask-conditioned."""

    def __init__(
        self,
        output_dir: str,
        n: int = 64,
        every_n_epochs: int = 1,
        samplers: list[str] | tuple[str, ...] = ("onepass", "configured"),
        panel_rows: int = 8,
        seed: int = 0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.n, self.every_n_epochs = n, every_n_epochs
        self.samplers = tuple(samplers)
        for s in self.samplers:
            require(
                s in ("onepass", "configured", "ddim", "ddpm", "repaint"),
                f"callbacks.inpaint_validation.samplers: {s!r} is not one of "
                "['onepass', 'configured', 'ddim', 'ddpm', 'repaint']",
            )
        self.rows, self.seed = panel_rows, seed

    def _batch(self, trainer: pl.Trainer, module) -> dict[str, Any] | None:
        dm = trainer.datamodule
        val = getattr(dm, "val_data", None)
        if not getattr(module, "mask_conditioned", False) or not val or "mask" not in val:
            return None
        n = min(self.n, len(val["image"]))
        return {
            "image": to_model_range(val["image"][:n]).to(module.device),
            "mask": val["mask"][:n].float().to(module.device),
            "kind": val["mask_kind"][:n],
            "label": val["label"][:n],
            "two_colour": isinstance(dm, PatternDataModule),
            "family_names": tuple(getattr(dm, "class_names", ())),
            "kind_names": dm.masks.kinds,
        }

    def evaluate(self, trainer: pl.Trainer, module) -> tuple[dict[str, float], Tensor] | None:
        b = self._batch(trainer, module)
        if b is None:
            return None
        metrics, columns = {}, []
        labels = b["label"] if module.num_classes else None
        for name in self.samplers:
            sampler = None if name == "configured" else {"name": name}
            out = module.generate(
                len(b["image"]),
                labels=labels,
                known=b["image"],
                mask=b["mask"],
                sampler=sampler,
                seed=self.seed,
            )
            tag = module.sampler.get("name", "ddim") if name == "configured" else name
            scores = score(
                out,
                b["image"],
                b["mask"],
                b["two_colour"],
                b["label"],
                b["family_names"],
                b["kind"],
                b["kind_names"],
            )
            metrics.update({f"val/inpaint_{tag}_{k}": v for k, v in scores.items()})
            columns.append(out[: self.rows])
        r = self.rows
        grid = panel_rows(
            [
                b["image"][:r],
                masked_input(b["image"][:r], b["mask"][:r]),
                mask_as_image(b["mask"][:r]),
            ]
            + columns
        )
        return metrics, grid

    def _run(self, trainer: pl.Trainer, module, name: str, log_metrics: bool) -> None:
        result = self.evaluate(trainer, module)
        if result is None:
            return
        metrics, grid = result
        ncol = 3 + len(self.samplers)
        if log_metrics:
            for k, v in metrics.items():
                module.log(k, v, on_epoch=True, batch_size=self.n)
        if trainer.is_global_zero:
            save_grid(trainer, grid, ncol, self.output_dir / f"{name}.png", "inpainting")

    def on_validation_epoch_end(self, trainer: pl.Trainer, module) -> None:
        if due(trainer, self.every_n_epochs):
            self._run(trainer, module, periodic_name(trainer, "inpaint_epoch"), log_metrics=True)

    def on_train_end(self, trainer: pl.Trainer, module) -> None:
        self._run(trainer, module, "inpaint_final", log_metrics=False)
