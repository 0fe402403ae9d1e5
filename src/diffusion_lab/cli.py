"""Shared wrapper for the @hydra.main entry points: user errors become one line and exit 2."""

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from diffusion_lab.errors import UserError

log = logging.getLogger("diffusion_lab")


def _multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _record_failure(cfg: DictConfig, error: BaseException) -> None:
    """metrics.json with status "failed" in the job's directory, so `compare` can report it."""
    from diffusion_lab.training.callbacks import write_json

    try:
        out = Path(cfg.paths.output_dir)
    except Exception:  # no usable output dir: the log line is all we can leave
        return
    write_json(
        out / "metrics.json",
        {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}".splitlines()[0][:500],
            "traceback": "".join(traceback.format_exception(error))[-4000:],
        },
    )


def run_task(task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run a task; return cfg.optimized_metric (for sweepers).

    In a sweep (-m) a failed job, whatever the exception, is logged, recorded as
    metrics.json {"status": "failed", ...} in its directory and scored NaN, so the other jobs go
    on. In a single run a user error is one `error:` line and exit 2; a bug keeps its traceback.
    """
    try:
        metrics = task(cfg)
    except Exception as e:
        if _multirun():
            if isinstance(e, UserError):
                log.error("job failed: %s", e)
            else:
                log.exception("job failed: %s: %s", type(e).__name__, e)
            _record_failure(cfg, e)
            return float("nan")
        if isinstance(e, UserError):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        raise
    key = cfg.get("optimized_metric")
    if not key:
        return None
    value = metrics.get(key)
    if value is None:
        log.warning("optimized_metric=%s is not among the run's metrics: %s", key, sorted(metrics))
        return float("nan") if _multirun() else None
    return float(value)
