"""Build data, model and LightningModule from a Hydra config; load checkpoints with clear errors."""

import math
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion_lab.app.schema import check_train_config
from diffusion_lab.data.datamodules import attribute_sizes
from diffusion_lab.diffusion import Diffusion, diffusion_from_config
from diffusion_lab.errors import UserError, require
from diffusion_lab.models.contract import check_denoiser, denoiser_kwargs
from diffusion_lab.training.module import DiffusionModule


def instantiate(node: Any, key: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with our own errors passed through and Hydra's shortened to a line."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while (
            cause is not None and not isinstance(cause, UserError) and cause.__cause__ is not None
        ):
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        # the library's own message (Lightning's, torch's), not Hydra's wrapper around it
        text = str(cause if cause is not None else e).strip()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "full_key" not in ln]
        raise UserError(f"{key}: {lines[0] if lines else type(cause).__name__}") from None


def _at_least(cfg: DictConfig, key: str, low: float, inclusive: bool = True) -> None:
    """A range check; the type was checked by the schema."""
    value = OmegaConf.select(cfg, key)
    if value is None:
        return
    ok = value >= low if inclusive else value > low
    require(
        ok and math.isfinite(value), f"{key}={value} must be {'>=' if inclusive else '>'} {low}"
    )


def validate(cfg: DictConfig) -> None:
    """Types and keys against what reads them (app/schema.py), then the ranges, before
    anything is built."""
    check_train_config(cfg)
    _at_least(cfg, "optimizer.lr", 0, inclusive=False)
    for key, low in [
        ("data.batch_size", 1),
        ("schedule.timesteps", 2),
        ("trainer.max_epochs", 1),
        ("data.image_size", 1),
        ("sampler.steps", 1),
    ]:
        _at_least(cfg, key, low)
    t_max = OmegaConf.select(cfg, "lr_scheduler.T_max")
    require(
        t_max is None or (isinstance(t_max, int) and t_max >= 1),
        f"lr_scheduler.T_max={t_max} must be a number of optimizer steps >= 1, or null for the "
        "run's length",
    )
    for key in ("schedule.start", "schedule.end"):
        value = OmegaConf.select(cfg, key)
        require(value is None or 0 < value < 1, f"{key}={value} must be in (0, 1)")


def build_diffusion(cfg: DictConfig) -> Diffusion:
    return diffusion_from_config(OmegaConf.to_container(cfg, resolve=True))


def build_net(cfg: DictConfig) -> torch.nn.Module:
    """The denoiser, wired to the data shape and the conditioning (one interface for all),
    checked against the denoiser contract (models/contract.py) before training starts."""
    sizes = attribute_sizes(cfg.conditioning.attributes)
    net = instantiate(cfg.model, "model", **denoiser_kwargs(cfg, sizes))
    check_denoiser(net)
    return net


def build_module(cfg: DictConfig) -> DiffusionModule:
    c = cfg.conditioning
    return DiffusionModule(
        net=build_net(cfg),
        diffusion=build_diffusion(cfg),
        optimizer=instantiate(cfg.optimizer, "optimizer"),
        lr_scheduler=instantiate(cfg.lr_scheduler, "lr_scheduler")
        if cfg.get("lr_scheduler")
        else None,
        ema_decay=cfg.ema_decay,
        p_uncond=c.p_uncond,
        guidance_scale=c.guidance_scale,
        sampler=OmegaConf.to_container(cfg.sampler, resolve=True),
        timestep_buckets=cfg.get("timestep_buckets", 4),
        channels_last=cfg.channels_last,
        compile=cfg.compile,
        config=OmegaConf.to_container(cfg, resolve=True),
        inpaint_loss=c.get("loss", "masked"),
        lr_warmup_steps=cfg.get("lr_warmup_steps", 0),
        lr_monitor=cfg.get("monitor", "val/loss"),
    )


def build_datamodule(cfg: DictConfig):
    dm = instantiate(cfg.data, "data")
    with open_dict(cfg):
        cfg.data.num_classes = dm.num_classes  # an image folder infers it from its subfolders
    return dm


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    require(path.is_file(), f"ckpt_path={path}: no such file")
    try:
        # weights_only: tensors and plain data only, so a crafted file cannot run code on load
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = re.findall(r"GLOBAL (\S+)", str(e))
        raise UserError(
            f"ckpt_path={path} holds more than tensors and plain data"
            + (f" (it names {names[0]})" if names else "")
            + "; refused, as unpickling it could run code"
        ) from None
    except Exception as e:  # truncated zip, pickle garbage, ...
        raise UserError(
            f"ckpt_path={path} is not a readable checkpoint ({type(e).__name__})"
        ) from None
    require(
        isinstance(ckpt, dict) and "state_dict" in ckpt and "diffusion_lab_config" in ckpt,
        f"ckpt_path={path} is not a diffusion-lab checkpoint (no state_dict / config inside)",
    )
    return ckpt


# classes renamed since a checkpoint's config was written: old `_target_` -> new
RENAMED_TARGETS = {
    "diffusion_lab.models.CourseUNet": "diffusion_lab.models.SimpleUNet",
    "diffusion_lab.training.inpaint.InpaintValidation": (
        "diffusion_lab.training.inpaint_callback.InpaintValidation"
    ),
}


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """A run config written by an earlier version, with renamed classes and keys brought up
    to date, so that its checkpoint loads."""
    with open_dict(cfg):
        for key in ("model", "callbacks.inpaint_validation"):
            node = OmegaConf.select(cfg, key)
            if node is not None and node.get("_target_") in RENAMED_TARGETS:
                node._target_ = RENAMED_TARGETS[node._target_]
        data = cfg.get("data")
        if data is not None and data.get("num_workers") == 0:
            del data["num_workers"]  # 0.1 configs listed it; in-memory data takes no workers
    return cfg


def load_module(path: str | Path) -> tuple[DiffusionModule, DictConfig]:
    """Rebuild the LightningModule a checkpoint was trained with and load its weights."""
    ckpt = read_checkpoint(path)
    cfg = upgrade_config(OmegaConf.create(ckpt["diffusion_lab_config"]))
    module = build_module(cfg)
    check_state_dict(module, ckpt["state_dict"], path)
    module.load_state_dict(ckpt["state_dict"])
    return module, cfg


def check_state_dict(
    module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path
) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or mismatched:
        what = f"missing {missing[0]}" if missing else f"shape of {mismatched[0]} differs"
        raise UserError(f"ckpt_path={path} was trained with a different model config ({what})")
