"""Checkpoints written atomically: a temporary file in the same directory, fsync, then rename.

Lightning's default goes through an fsspec transaction whose temporary file lives in the
system temp dir; when that is another filesystem (a cluster's local /tmp vs a shared output
directory) the final move is a copy, and a kill during it leaves a truncated last.ckpt.
A rename within one directory is atomic on POSIX filesystems. A full disk during the write
ends the run with one line; the previous last.ckpt stays intact and resumable. Reads are
weights_only: a checkpoint crafted to run code on unpickling is refused.
"""

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from diffusion_lab.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_write(path, hint="free space, then resume with ckpt_path=last") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self, path: str | Path, *args: Any, weights_only: bool | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        # resuming (ckpt_path=...) too reads tensors and plain data only: no code runs on load
        return super().load_checkpoint(path, *args, weights_only=True, **kwargs)
