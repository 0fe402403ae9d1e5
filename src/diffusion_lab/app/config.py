"""Where the configs live and what Hydra needs before it composes them.

The YAML groups are the repository's top-level `conf/`, shipped inside the package as
`diffusion_lab/conf` (a link in the source tree, real files in a wheel), so Hydra finds them on
its package search path (`pkg://diffusion_lab.conf`) wherever the package is installed.
"""

import contextlib
import os
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.hardware import default_cpu_precision

CONFIG_MODULE = "diffusion_lab.conf"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
# conf/trainer/cpu.yaml: `precision: ${cpu_precision:}`
RESOLVER = "cpu_precision"


def config_dir() -> Path:
    """The installed config folder, for listing its groups."""
    return Path(str(files("diffusion_lab") / "conf"))


def config_groups() -> list[str]:
    return sorted(
        d.name for d in config_dir().iterdir() if d.is_dir() and not d.name.startswith("_")
    )


def register_resolvers() -> None:
    """The resolvers the configs use; called wherever a config is composed or loaded."""
    OmegaConf.register_new_resolver(RESOLVER, default_cpu_precision, replace=True)
    OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)
    # `${if_null:${output_dir},<default>}`: a command's own folder unless output_dir= names one
    OmegaConf.register_new_resolver(
        "if_null", lambda value, default: default if value is None else value, replace=True
    )


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """A config composed outside a Hydra run (notebooks, tests, `viz`): Hydra's own keys and
    ${hydra:...} are not available."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def command_output_dir(cfg: DictConfig) -> Path:
    """Where a command writes: `output_dir=` when given, else its own timestamped run directory
    (outputs/<command>/runs/<time>); created."""
    out = Path(cfg.output_dir) if cfg.get("output_dir") else Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def sampling_progress(what: str) -> Iterator[Callable[..., None]]:
    """A Rich progress line (steps done, elapsed) for a long sampling call; yields the
    per-step callback to hand to `generate`. Silent where stderr is not a terminal."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description} {task.completed} steps"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(what, total=None)
        yield lambda *_: progress.advance(task)
