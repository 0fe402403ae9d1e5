"""What `python -m diffusion_lab.train` and `... .sample` do, as plain functions of a config."""

import logging
import os
import platform
import signal
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.utilities.exceptions import SIGTERMException

from diffusion_lab.app.build import (
    build_datamodule,
    build_module,
    instantiate,
    read_checkpoint,
    validate,
)
from diffusion_lab.app.config import RESOLVER
from diffusion_lab.app.hydra_entry import hydra_entry, run_task
from diffusion_lab.errors import UserError, require
from diffusion_lab.hardware import cpu_precision_reason
from diffusion_lab.training.callbacks import (
    CheckpointOnSigterm,
    SampleGrid,
    Throughput,
    write_json,
)
from diffusion_lab.training.measure import forward_mflops

log = logging.getLogger("diffusion_lab")


def _not_an_advert(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Drop lines Lightning prints in every run that say nothing about the run: an advert for
    its cloud logger, a deprecation warning raised inside its own code by torch's pytree, and,
    in bf16-mixed runs, a warning that the model summary counts 32 bits per parameter (right:
    mixed precision keeps the weights in float32)."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_not_an_advert)
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    warnings.filterwarnings(
        "ignore", message=r"Precision bf16-mixed is not supported by the model summary"
    )


def versions() -> dict[str, str]:
    import hydra
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pl.__version__,
        "hydra": hydra.__version__,
    }


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`ckpt_path=last` means this run directory's checkpoints/last.ckpt; `auto` the same when
    there is one, else a fresh start (how a requeued SLURM job continues); else a path or null."""
    if ckpt_path is None and os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0"):
        ckpt_path = "auto"  # a requeued SLURM job continues from the checkpoint it saved
    if ckpt_path is None:
        return None
    if ckpt_path in ("last", "auto"):
        path = output_dir / "checkpoints" / "last.ckpt"
        if ckpt_path == "auto" and not path.is_file():
            return None
        require(
            path.is_file(), f"ckpt_path=last: no {path} (set hydra.run.dir to the run to resume)"
        )
        read_checkpoint(path)  # a corrupt or crafted last.ckpt: one line, before any work
        return str(path)
    read_checkpoint(ckpt_path)  # a clear error for a missing or corrupt file, before any work
    return str(ckpt_path)


def _chosen_for_this_cpu(cfg: DictConfig) -> str | None:
    """trainer.precision when the config left it to ${cpu_precision:}, else None."""
    if OmegaConf.to_container(cfg.trainer).get("precision") == f"${{{RESOLVER}:}}":
        return cfg.trainer.precision
    return None


def _instantiate_group(node: DictConfig | None, key: str) -> list[Any]:
    if not node:
        return []
    return [
        instantiate(v, f"{key}.{k}") for k, v in node.items() if v is not None and "_target_" in v
    ]


def _steps_per_epoch(trainer: pl.Trainer) -> int:
    batches = trainer.num_training_batches
    if not isinstance(batches, int):  # inf: an iterable data module of unknown length
        return max(1, trainer.global_step)
    return max(1, batches // max(1, trainer.accumulate_grad_batches))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train from a composed config; returns the metrics written to metrics.json."""
    validate(cfg)
    quiet_lightning()
    out = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")  # data errors (missing files, empty folder) surface before training
    module = build_module(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), out)

    callbacks = _instantiate_group(cfg.get("callbacks"), "callbacks")
    mode, patience = cfg.get("monitor_mode", "min"), cfg.get("early_stopping_patience")
    require(mode in ("min", "max"), f"monitor_mode={mode!r} is not one of ['min', 'max']")
    if patience is not None:
        require(patience >= 1, f"early_stopping_patience={patience} must be >= 1 or null (off)")
        # strict=False: validations without the metric (eval/fid every N epochs) are skipped
        callbacks.append(EarlyStopping(cfg.monitor, patience=patience, mode=mode, strict=False))
    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
    if throughput is None:
        throughput = Throughput()
        callbacks.append(throughput)
    loggers = _instantiate_group(cfg.get("logger"), "logger")
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[instantiate(cfg.checkpoint_io, "checkpoint_io")],
    )

    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
        write_json(out / "run_info.json", {"seed": cfg.seed, "versions": versions()})
        for lg in loggers:
            if hasattr(lg, "log_hyperparams"):
                lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        log.info("Run directory: %s", out)
        chosen = _chosen_for_this_cpu(cfg)
        if chosen is not None:
            other = "32 trains in float32" if chosen == "bf16-mixed" else "bf16-mixed forces bf16"
            log.info(
                "Precision:     %s, the default here: %s; trainer.precision=%s",
                chosen,
                cpu_precision_reason(),
                other,
            )
        log.info("TensorBoard:   tensorboard --logdir %s", out / "tensorboard")

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:  # Lightning stops the loop at a batch end after a SIGTERM
        sigterm = next((c for c in callbacks if isinstance(c, CheckpointOnSigterm)), None)
        saved = sigterm is not None and sigterm.saved_at is not None
        received = sigterm.received if sigterm is not None and sigterm.received else signal.SIGTERM
        log.warning(
            "Stopped by %s at step %d: %s; resume with ckpt_path=last",
            signal.Signals(received).name,
            trainer.global_step,
            "last.ckpt saved" if saved else "the previous last.ckpt stands",
        )
        raise SystemExit(128 + signal.SIGTERM) from None  # the shell's status for a SIGTERM
    except ValueError as e:
        if "val_check_interval" not in str(e):
            raise
        raise UserError(
            f"trainer.val_check_interval={cfg.trainer.val_check_interval} is more than the training "
            f"batches in an epoch (trainer.limit_train_batches={cfg.trainer.limit_train_batches}, "
            f"data.batch_size={cfg.data.batch_size}); lower it, or set "
            "trainer.val_check_interval=null to validate at the end of each epoch"
        ) from None

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    ckpt_cb = trainer.checkpoint_callback
    grid = next((c for c in callbacks if isinstance(c, SampleGrid)), None)
    metrics.update(
        {
            "params": sum(p.numel() for p in module.net.parameters()),
            "mflops_per_image": forward_mflops(module.net),
            "train_images_per_sec": throughput.images_per_sec,
            # timed on the final sample grid (sampler and steps as in cfg.sampler)
            "sample_seconds_per_image": grid.seconds_per_image if grid else None,
            "global_step": trainer.global_step,
            # epochs of training done: a fraction after a run that stopped (or resumed) mid-epoch
            "epochs": round(trainer.global_step / max(1, _steps_per_epoch(trainer)), 3),
            "best_checkpoint": getattr(ckpt_cb, "best_model_path", None) or None,
            "last_checkpoint": getattr(ckpt_cb, "last_model_path", None) or None,
        }
    )
    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
        log.info("Metrics: %s", out / "metrics.json")
        log.info("Samples: %s", out / "samples" / "final.png")
    return metrics


@hydra_entry("train")
def main(cfg: DictConfig) -> float | None:
    return run_task(train, cfg)
