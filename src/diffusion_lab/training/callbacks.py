"""Callbacks: fixed-seed sample grids, throughput / run-summary bookkeeping, checkpoints on
SIGTERM."""

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torchvision.utils import make_grid, save_image

from diffusion_lab.files import atomic_write


def tensorboard(trainer: pl.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def save_grid(trainer: pl.Trainer, images: torch.Tensor, nrow: int, path: Path, tag: str) -> None:
    """One image grid (values in [0, 1]) as a PNG and as a TensorBoard image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images, nrow=nrow, padding=1, pad_value=1.0)
    with atomic_write(path) as f:
        save_image(grid, f, format="png")
    tb = tensorboard(trainer)
    if tb is not None:
        tb.add_image(tag, grid, trainer.global_step)


def due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """At the end of validation: is this an epoch to act on (not the sanity check)?"""
    epoch = trainer.current_epoch + 1
    return not trainer.sanity_checking and every_n_epochs > 0 and epoch % every_n_epochs == 0


def periodic_name(trainer: pl.Trainer, prefix: str) -> str:
    """`<prefix>_003` for epoch 3; `<prefix>_003_step_000450` where validation runs several
    times an epoch (val_check_interval), so one epoch's files do not overwrite each other."""
    name = f"{prefix}_{trainer.current_epoch + 1:03d}"
    every = trainer.val_check_batch
    if isinstance(every, int) and every < trainer.num_training_batches:
        name += f"_step_{trainer.global_step:06d}"
    return name


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
            self._save(trainer, module, periodic_name(trainer, "epoch"))

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
    with atomic_write(path, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))


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


class CheckpointOnSigterm(pl.Callback):
    """On SIGTERM (preemption, `scancel`, `docker stop`, a time limit), last.ckpt at the next
    training batch end, then the run stops (SIGTERMException) so that `ckpt_path=last` resumes.

    Lightning's signal connector already catches SIGTERM, but then raises SIGTERMException
    wherever the loop is next (mid-validation, an epoch's last batch) and saves nothing; this
    callback's own handler only sets a flag, so the run goes on to the next batch end that
    StepCheckpoint could save at (not an epoch's last batch: that checkpoint resumes with the
    epoch counters one off), where a mid-epoch checkpoint resumes exactly.
    """

    def __init__(self, ddp_check_every: int = 10) -> None:
        self.ddp_check_every = ddp_check_every  # batches between the ranks' agreement checks
        self.requested = False  # SIGTERM seen by this process
        self.saved_at: int | None = None  # the global step of the SIGTERM checkpoint
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True

    def on_train_start(self, trainer: pl.Trainer, module) -> None:
        if threading.current_thread() is threading.main_thread():  # signals: main thread only
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _restore(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def on_train_end(self, trainer: pl.Trainer, module) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, module, exception: BaseException) -> None:
        self._restore()

    @staticmethod
    def last_path(trainer: pl.Trainer) -> str:
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath:
                return os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
        return os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")

    def on_train_batch_end(
        self, trainer: pl.Trainer, module, outputs, batch, batch_idx: int
    ) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the end-of-epoch last.ckpt comes after validation; stop at the next batch
        stop = self.requested
        if trainer.world_size > 1:  # any rank's signal stops all (the save has a barrier)
            if (batch_idx + 1) % self.ddp_check_every:
                return  # a collective every batch would sync the hot path; every N is enough
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        path = self.last_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full state, to resume
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.save_last:
                cb.last_model_path = path
        self.saved_at = trainer.global_step
        logging.getLogger("diffusion_lab").info("SIGTERM: saved %s at step %d", path, self.saved_at)
        raise SIGTERMException  # Lightning's own stop: no end-of-training grids, no metrics.json
