"""Analysis figures in TensorBoard (and as PNGs in <run>/figures/).

At the start of training: the forward process of a few real images for the linear and cosine
schedules, and the sinusoidal time-embedding heatmaps. At the listed epochs and at the end:
noisy / predicted-x0 / original triplets and the denoising progression of a few samples.
"""

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from diffusion_lab.training.callbacks import tensorboard

log = logging.getLogger("diffusion_lab")


class AnalysisFigures(pl.Callback):
    def __init__(
        self,
        output_dir: str | None = None,
        n_images: int = 4,
        steps: int = 10,
        epochs: list[int] | tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
        at_end: bool = True,
        dpi: int = 80,
        seed: int = 0,
    ) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.n, self.steps, self.epochs = n_images, steps, set(epochs)
        self.at_end, self.dpi, self.seed = at_end, dpi, seed
        self.start_seconds: float | None = None  # what the figures at the start cost
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._last_step: int | None = None

    def _log(self, trainer: pl.Trainer, tag: str, fig, name: str) -> None:
        from PIL import Image

        from diffusion_lab.figures.plots import render

        image = render(fig, self.dpi)
        tb = tensorboard(trainer)
        if tb is not None:
            tb.add_image(tag, image, trainer.global_step, dataformats="HWC")
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(self.output_dir / f"{name}.png")

    def _data(self, trainer: pl.Trainer) -> bool:
        from diffusion_lab.figures.plots import pick_images

        dm = trainer.datamodule
        split = getattr(dm, "val_data", None) or getattr(dm, "train_data", None)
        if split is None:
            return False
        self._images, self._labels = pick_images(split, self.n)
        return True

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, module) -> None:
        from diffusion_lab.figures.plots import (
            forward_process_figure,
            schedules_for,
            sinusoidal_dim,
            time_embedding_figure,
        )

        start = time.perf_counter()
        if module.diffusion.formulation != "ddpm":
            # the forward-process, time-embedding and triplet figures read DDPM's timestep tables
            log.warning("AnalysisFigures: DDPM-only figures; skipped for diffusion.formulation=edm")
            return
        if not self._data(trainer):
            log.warning("AnalysisFigures: no in-memory data module; skipping the figures")
            return
        T = module.diffusion.num_timesteps
        cfg = module.config or {}
        fig = forward_process_figure(
            self._images, schedules_for(T, cfg.get("schedule")), self.steps, seed=self.seed
        )
        self._log(trainer, "figures/forward_process", fig, "forward_process")
        fig = time_embedding_figure(T, sinusoidal_dim(module.net))
        self._log(trainer, "figures/time_embedding", fig, "time_embedding")
        self.start_seconds = time.perf_counter() - start
        log.info("Analysis figures at the start took %.1f s", self.start_seconds)

    @rank_zero_only
    def _model_figures(self, trainer: pl.Trainer, module, label: str) -> None:
        from diffusion_lab.figures.plots import denoising_progression_figure, triplets_figure

        if self._images is None or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        fig = triplets_figure(module, self._images, self._labels, title=label, seed=self.seed)
        self._log(trainer, "figures/triplets", fig, f"triplets_{label.replace(' ', '_')}")
        labels = self._labels if module.num_classes else None
        fig = denoising_progression_figure(
            module, self.n, self.steps, labels=labels, seed=self.seed
        )
        self._log(trainer, "figures/progression", fig, f"progression_{label.replace(' ', '_')}")

    def on_validation_epoch_end(self, trainer: pl.Trainer, module) -> None:
        epoch = trainer.current_epoch + 1
        if not trainer.sanity_checking and epoch in self.epochs:
            self._model_figures(trainer, module, f"epoch {epoch:03d}")

    def on_train_end(self, trainer: pl.Trainer, module) -> None:
        if self.at_end:
            self._model_figures(trainer, module, "final")
