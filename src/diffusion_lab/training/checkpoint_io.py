"""Checkpoints written atomically: a temporary file in the same directory, fsync, then rename.

Lightning's default goes through an fsspec transaction whose temporary file lives in the
system temp dir; when that is another filesystem (a cluster's local /tmp vs a shared output
directory) the final move is a copy, and a kill during it leaves a truncated last.ckpt.
A rename within one directory is atomic on POSIX filesystems.
"""

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
