"""Callbacks: fixed-seed sample grids, and throughput / run-summary bookkeeping."""

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image


def tensorboard(trainer: pl.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def save_grid(trainer: pl.Trainer, images: torch.Tensor, nrow: int, path: Path, tag: str) -> None:
    """One image grid (values in [0, 1]) as a PNG and as a TensorBoard image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images, nrow=nrow, padding=1, pad_value=1.0)
    save_image(grid, path)
    tb = tensorboard(trainer)
    if tb is not None:
        tb.add_image(tag, grid, trainer.global_step)


def due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """At the end of validation: is this an epoch to act on (not the sanity check)?"""
    epoch = trainer.current_epoch + 1
    return not trainer.sanity_checking and every_n_epochs > 0 and epoch % every_n_epochs == 0


class SampleGrid(pl.Callback):
    """Samples a fixed-seed grid every `every_n_epochs` and at the end; PNG + TensorBoard image.

    For a class-conditional model each row is one class.
    """

    def __init__(
        self, output_dir: str, n: int = 64, every_n_epochs: int = 5, seed: int = 0
    ) -> None:
        self.output_dir = Path(output_dir)
        self.n, self.every_n_epochs, self.seed = n, every_n_epochs, seed
        self.seconds_per_image: float | None = None  # of the last grid, for metrics.json

    def _grid(self, module) -> tuple[torch.Tensor, int]:
        k = module.num_classes
        per_class = max(1, self.n // k) if k else 0
        labels = torch.arange(k).repeat_interleave(per_class) if k else None
        n = len(labels) if k else self.n
        start = time.perf_counter()
        images = module.generate(n, labels=labels, seed=self.seed)
        self.seconds_per_image = (time.perf_counter() - start) / n
        nrow = per_class if k else int(n**0.5)
        return (images.float().cpu() + 1) / 2, nrow

    @rank_zero_only
    def _save(self, trainer: pl.Trainer, module, name: str) -> None:
        images, nrow = self._grid(module)
        save_grid(trainer, images, nrow, self.output_dir / f"{name}.png", "samples")

    def on_validation_epoch_end(self, trainer: pl.Trainer, module) -> None:
        if due(trainer, self.every_n_epochs):
            self._save(trainer, module, f"epoch_{trainer.current_epoch + 1:03d}")

    def on_train_end(self, trainer: pl.Trainer, module) -> None:
        self._save(trainer, module, "final")


class Throughput(pl.Callback):
    """Training images per second, timed over training batches only (not validation)."""

    def __init__(self, warmup_batches: int = 3) -> None:
        self.warmup = warmup_batches
        self.reset()

    def reset(self) -> None:
        self.images, self.seconds, self.batches, self._t0 = 0, 0.0, 0, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self._t0 is not None and self.batches > self.warmup:
            self.seconds += time.perf_counter() - self._t0
            self.images += len(batch["image"]) * trainer.world_size

    @property
    def images_per_sec(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write via a temporary file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


class StepCheckpoint(ModelCheckpoint):
    """last.ckpt every N training steps, except on an epoch's last batch.

    A checkpoint taken on the last batch, before the epoch is marked complete, resumes with
    Lightning's epoch counters one off, and the run after the next resume trains extra steps;
    the end-of-epoch checkpoint (after validation, by the best-checkpoint callback) covers it.
    """

    def on_train_batch_end(
        self, trainer: pl.Trainer, module, outputs, batch, batch_idx: int
    ) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
