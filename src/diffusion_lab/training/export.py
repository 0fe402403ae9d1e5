"""The trained weights as safetensors plus the resolved config: a folder that loads without
unpickling anything (no code can run on load) and without Lightning.

Format of `<out_dir>/` (written by `export_safetensors` from a checkpoint, and by the
`ExportWeights` callback at the end of every training run into `<run>/export/`):

- `model.safetensors`: the network's weights, the EMA copy when the run kept one
  (`ema_decay` not null), else the trained weights. The keys are exactly those of the net's
  own `state_dict()` (the nn.Module built from `config.json`'s `model` node, e.g.
  `down.0.conv.weight`; buffers such as BatchNorm running statistics included), float32 or
  whatever dtype the net holds, contiguous. Metadata (all strings): `format` =
  "diffusion-lab/1", `weights` = "ema" or "net", `global_step`, `source` (the checkpoint file
  name, or "training").
- `config.json`: the resolved run config, as stored in the checkpoint (`diffusion_lab_config`):
  `model` (with `_target_`), `diffusion`, `schedule`, `conditioning`, `sampler`, `data`
  (image size, channels, num_classes) and the rest, so that a loader can rebuild the net and
  the diffusion process, then `net.load_state_dict(safetensors.torch.load_file(...))`.

Both files are written atomically (temporary file + rename).
"""

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from safetensors.torch import save

from diffusion_lab.errors import UserError
from diffusion_lab.files import atomic_write

FORMAT = "diffusion-lab/1"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def write_export(
    net_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    out_dir: str | Path,
    metadata: dict[str, str],
) -> Path:
    """model.safetensors + config.json in out_dir; returns out_dir."""
    out = Path(out_dir)
    # safetensors refuses shared or strided storage: one contiguous copy per tensor
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net_state.items()}
    with atomic_write(out / WEIGHTS) as f:
        f.write(save(tensors, metadata={"format": FORMAT, **metadata}))
    with atomic_write(out / CONFIG, "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True, default=str))
    return out


def net_state_from_checkpoint(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The EMA net's weights from a DiffusionModule state_dict (else the trained net's)."""
    for prefix, kind in (("ema.module.", "ema"), ("net.", "net")):
        state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if state:
            return state, kind
    raise KeyError("no net.* or ema.module.* weights")


def export_safetensors(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Export a training checkpoint's EMA weights and resolved config (format: module doc)."""
    ckpt_path = Path(ckpt_path)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        state, kind = net_state_from_checkpoint(ckpt["state_dict"])
        config = ckpt["diffusion_lab_config"]
    except FileNotFoundError:
        raise UserError(f"ckpt_path={ckpt_path}: no such file") from None
    except Exception as e:  # not a (safe) diffusion-lab checkpoint
        raise UserError(
            f"ckpt_path={ckpt_path} is not a diffusion-lab checkpoint ({type(e).__name__})"
        ) from None
    meta = {
        "weights": kind,
        "global_step": str(ckpt.get("global_step", "")),
        "source": ckpt_path.name,
    }
    return write_export(state, config, out_dir, meta)


def export_module(module: pl.LightningModule, out_dir: str | Path, global_step: int) -> Path:
    """Export a live DiffusionModule (its sampling_net: the EMA copy when there is one)."""
    kind = "ema" if getattr(module, "ema", None) is not None else "net"
    return write_export(
        module.sampling_net.state_dict(),
        module.config,
        out_dir,
        {"weights": kind, "global_step": str(global_step), "source": "training"},
    )


class ExportWeights(pl.Callback):
    """<run>/export/ (model.safetensors + config.json) at the end of training."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, module) -> None:
        export_module(module, self.output_dir, trainer.global_step)
