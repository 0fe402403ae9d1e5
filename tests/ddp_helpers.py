"""Test-only pieces that a two-process (trainer=ddp_cpu) training loads by `_target_`."""

import json
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from diffusion_lab.models import SimpleUNet


class RecordStepNoise(pl.Callback):
    """Writes the timesteps each rank's first training batch draws to rank_<r>.json."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)

    def on_train_start(self, trainer, module) -> None:
        g = module.step_generator(0)
        t = torch.randint(0, module.diffusion.num_timesteps, (16,), generator=g)
        path = self.output_dir / f"rank_{trainer.global_rank}.json"
        path.write_text(json.dumps(t.tolist()))


class NanOnRankOne(SimpleUNet):
    """A U-Net whose output is nan on DDP rank 1 only."""

    def forward(self, x, t, cond=None):
        out = super().forward(x, t, cond)
        if dist.is_initialized() and dist.get_rank() == 1 and os.environ.get("NAN_ON_RANK_ONE"):
            return out * float("nan")
        return out
