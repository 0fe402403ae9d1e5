"""Test-only pieces that subprocess runs load by `_target_` (they must be importable)."""

import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from diffusion_lab.training.checkpoint_io import AtomicCheckpointIO


class KillAtStep(pl.Callback):
    """SIGKILL this process right after optimizer step `step` (no cleanup, like a crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillDuringSave(AtomicCheckpointIO):
    """Dies in the middle of writing its `at_save`-th checkpoint."""

    def __init__(self, at_save: int) -> None:
        super().__init__()
        self.at_save, self.saves = at_save, 0

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        self.saves += 1
        if self.saves == self.at_save:
            path = Path(path)
            with open(path.with_name(f".{path.name}.tmp-{os.getpid()}"), "wb") as f:
                f.write(b"PK\x03\x04 half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        super().save_checkpoint(checkpoint, path, storage_options)
