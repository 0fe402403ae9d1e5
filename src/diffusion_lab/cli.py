"""Shared wrapper for the @hydra.main entry points: user errors become one line and exit 2."""

import logging
import sys
from collections.abc import Callable
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


def run_task(task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run a task; return cfg.optimized_metric (for sweepers). In a sweep a failed job is logged
    and scored as NaN so the other jobs go on."""
    try:
        metrics = task(cfg)
    except UserError as e:
        if _multirun():
            log.error("job failed: %s", e)
            return float("nan")
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None
