"""Callbacks: fixed-seed sample grids, throughput / run-summary bookkeeping, checkpoints on
SIGTERM."""

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torchvision.utils import make_grid, save_image

from diffusion_lab.errors import UserError
from diffusion_lab.files import atomic_write
from diffusion_lab.hardware import synchronized_clock


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
        start = synchronized_clock(module.device)
        images = module.generate(n, labels=labels, seed=self.seed)
        self.seconds_per_image = (synchronized_clock(module.device) - start) / n
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
    """Training images per second, timed over training batches only (not validation or the
    first `warmup_batches`). The clock is read (after a device synchronisation) only where the
    timed stretches start and end, not every batch: a GPU must not wait for the host each step."""

    def __init__(self, warmup_batches: int = 3) -> None:
        self.warmup = warmup_batches
        self.reset()

    def reset(self) -> None:
        self.images, self.seconds, self.batches, self._t0 = 0, 0.0, 0, None
        self._pending = 0  # images of the stretch in progress

    def _start(self, module) -> None:
        self._t0, self._pending = synchronized_clock(module.device), 0

    def _stop(self, module) -> None:
        if self._t0 is not None:
            self.seconds += synchronized_clock(module.device) - self._t0
            self.images += self._pending
        self._t0 = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self._t0 is not None:
            self._pending += len(batch["image"]) * trainer.world_size
        elif self.batches >= self.warmup:
            self._start(module)  # after the warmup batches, and after each validation

    def on_validation_start(self, trainer, module) -> None:
        self._stop(module)  # the next training batch end starts the next stretch

    def on_train_end(self, trainer, module) -> None:
        self._stop(module)

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        self._stop(module)

    @property
    def images_per_sec(self) -> float | None:
        return self.images / self.seconds if self.images and self.seconds > 0 else None


class ProgressBar(RichProgressBar):
    """Lightning's RichProgressBar, with the logged values (train/loss) read every
    `metrics_every_n_batches` batches on an accelerator, where each read waits for the device
    (on a CPU every batch). The position still moves every batch."""

    def __init__(self, metrics_every_n_batches: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics_every_n_batches = metrics_every_n_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        every = 1 if pl_module.device.type == "cpu" else self.metrics_every_n_batches
        if (batch_idx + 1) % every == 0 or batch_idx + 1 >= trainer.num_training_batches:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # the parent's update without its metrics read (Lightning has no switch for it)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, batch_idx + 1)
        self.refresh()


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

    Under SLURM via submitit, the warning before a time limit or preemption is
    `requeue_signal` (submitit's SUBMITIT_PREEMPT_SIGNAL, USR2 unless set), and submitit's own
    handler requeues the job at once, saving nothing. This callback takes that signal too: it
    saves last.ckpt at the next batch end and only then hands the signal to submitit's handler,
    which requeues the job; the requeued job resumes with ckpt_path=auto.
    """

    def __init__(self, ddp_check_every: int = 10, requeue_signal: str | None = None) -> None:
        self.ddp_check_every = ddp_check_every  # batches between the ranks' agreement checks
        name = requeue_signal or os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        self.requeue_signal = getattr(signal, f"SIG{name.upper().removeprefix('SIG')}", None)
        if self.requeue_signal is None:
            raise UserError(f"requeue_signal={name!r} is not a signal name (e.g. USR2, USR1)")
        self.received: int | None = None  # the signal this process got
        self.saved_at: int | None = None  # the global step of the checkpoint it saved
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum

    def on_train_start(self, trainer: pl.Trainer, module) -> None:
        if threading.current_thread() is threading.main_thread():  # signals: main thread only
            for sig in (signal.SIGTERM, self.requeue_signal):
                self._previous[sig] = signal.signal(sig, self._handler)

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            self._previous = {}

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
        name = signal.Signals(self.received or signal.SIGTERM).name
        log = logging.getLogger("diffusion_lab")
        log.info("%s: saved %s at step %d", name, path, self.saved_at)
        previous = self._previous.get(self.received or signal.SIGTERM)
        if self.received == self.requeue_signal and callable(previous):
            self._restore()
            log.info("%s: handing over to the scheduler's handler to requeue the job", name)
            previous(self.received, None)  # submitit: requeue, then exit (rank 0 only)
        raise SIGTERMException  # Lightning's own stop: no end-of-training grids, no metrics.json
