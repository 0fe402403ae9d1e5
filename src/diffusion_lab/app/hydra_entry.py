"""The @hydra.main wrapper every command uses: configs from the package, resolvers registered,
the command line checked first, user errors as one line and exit 2."""

import difflib
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from diffusion_lab.app.config import (
    CONFIG_MODULE,
    CONFIG_PATH,
    config_dir,
    config_groups,
    register_resolvers,
)
from diffusion_lab.errors import UserError
from diffusion_lab.host_memory import configure as configure_host_memory

log = logging.getLogger("diffusion_lab")

# Hydra's own flags (--cfg job, -cn NAME, --help, ...) change what is composed: Hydra checks those
_CHECKED_FLAGS = {"-m", "--multirun"}


# keys that were renamed so that every command uses one vocabulary
RENAMED_KEYS = {"n_samples": "n"}


def _group_not_chosen(group: str, override: str, config_name: str) -> str:
    """`sampler.steps=10` when this command has no sampler chosen, or `data.root=...` for a
    command that has no data group: say what to write instead."""
    options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
    defaults = (config_dir() / f"{config_name}.yaml").read_text()
    if f"- {group}:" in defaults:  # a group of this command, empty by default
        return (
            f"{override}: choose a {group} first, e.g. {group}={options[0]} {override} "
            f"({group} options: {', '.join(options)})"
        )
    hint = " (the data's location is data_root=...)" if group == "data" else ""
    return f"{override}: `{config_name}` has no {group} settings; it uses the checkpoint's{hint}"


def _config_error(error: Exception, override: str, config_name: str) -> str:
    """Hydra's multi-line composition report as one line naming the key and what is allowed."""
    from hydra.errors import MissingConfigException

    options = getattr(error, "options", None)
    if isinstance(error, MissingConfigException) and options:
        group = (error.missing_cfg_file or override.split("=")[0]).rsplit("/", 1)[0]
        return f"{override}: no such {group} config; choose one of: {', '.join(options)}"
    cause = error.__cause__
    parent = getattr(cause, "parent_node", None)
    if getattr(cause, "full_key", None) and parent is not None:
        full_key, key = str(cause.full_key), str(cause.key)
        prefix = full_key[: -len(key)]
        known = [str(k) for k in parent.keys() if k != "hydra"]
        if not prefix and key in RENAMED_KEYS:
            return f"{full_key} is now {RENAMED_KEYS[key]}: write {override.replace(key, RENAMED_KEYS[key], 1)}"
        if not prefix and key in config_groups() and key not in known:
            return _group_not_chosen(key, override, config_name)
        if prefix.count(".") == 1 and prefix[:-1] in config_groups() and not known:
            return _group_not_chosen(prefix[:-1], override, config_name)  # `clip: null`
        if not prefix:  # a config group left empty by default (sampler, debug) is no key yet
            known += [g for g in config_groups() if g not in [*known, "hydra"]]
        close = difflib.get_close_matches(key, known, n=1)
        where = f"keys of {prefix[:-1]}" if prefix else "top-level keys"
        hint = f"did you mean {prefix}{close[0]}?" if close else f"{where}: {', '.join(known)}"
        return f"{full_key} is not a config key; {hint}"
    lines = [line.strip().rstrip(".") for line in str(error).splitlines() if line.strip()]
    return f"{override}: " + "; ".join(lines)


def _refuse_relaunching_ddp(cfg: DictConfig) -> None:
    """Lightning's `ddp` strategy starts the other processes by running the command line again;
    inside a sweep each of them would run the whole sweep. Under SLURM the tasks come from srun
    instead, and `ddp_spawn` starts them from inside the job, so both are fine."""
    from omegaconf import OmegaConf

    trainer = OmegaConf.to_container(cfg.trainer, resolve=False)
    strategy, devices = str(trainer.get("strategy", "auto")), trainer.get("devices", 1)
    from_slurm = "${hydra:launcher" in str(devices) or "SLURM_NTASKS" in os.environ
    if strategy == "ddp" and str(devices) not in ("1", "auto") and not from_slurm:
        raise UserError(
            f"trainer.strategy=ddp with trainer.devices={devices} in a sweep (-m): each DDP "
            "process would rerun the whole sweep; use trainer.strategy=ddp_spawn, or "
            "hydra/launcher=slurm trainer=slurm, or run the jobs one by one without -m"
        )


def check_overrides(config_name: str, args: list[str]) -> None:
    """Compose the config from these command-line overrides before Hydra does, so that a typo in
    a key or a config choice is one line (UserError) rather than Hydra's multi-line report.

    A choice sweep over a config group (`model=a,b`) is checked choice by choice, one over a value
    (`seed=1,2`) by its first value; range, interval and glob sweeps are left to the sweeper."""
    if any(a.startswith("-") and a not in _CHECKED_FLAGS for a in args):
        return
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    parser = OverridesParser.create()
    fixed: list[str] = []  # every override with a single value: the first of a choice sweep
    sweeps: list[tuple[int, list[str]]] = []  # position in `fixed` -> the other choices
    for arg in (a for a in args if a not in _CHECKED_FLAGS):
        try:
            (override,) = parser.parse_overrides([arg])
        except HydraException as e:
            raise UserError(f"cannot read the override {arg!r}: {str(e).splitlines()[0]}") from None
        if not override.is_sweep_override():
            fixed.append(arg)
        elif override.value_type != ValueType.GLOB_CHOICE_SWEEP and override.is_choice_sweep():
            first, *others = override.sweep_string_iterator()
            key = override.get_key_element()
            if override.key_or_group in config_groups():  # each choice is its own file
                sweeps.append((len(fixed), [f"{key}={v}" for v in others]))
            fixed.append(f"{key}={first}")
    variants = [(fixed, None)] + [
        (fixed[:i] + [alt] + fixed[i + 1 :], alt) for i, alts in sweeps for alt in alts
    ]
    register_resolvers()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        for overrides, swept in variants:
            try:
                cfg = compose(
                    config_name=config_name, overrides=overrides, return_hydra_config=True
                )
            except (HydraException, OmegaConfBaseException) as e:
                culprit = swept or _culprit(e, overrides)
                raise UserError(_config_error(e, culprit, config_name)) from None
            multirun = bool({"-m", "--multirun"} & set(args)) or "MULTIRUN" in str(cfg.hydra.mode)
            if multirun and "trainer" in cfg:
                _refuse_relaunching_ddp(cfg)


def hydra_entry(config_name: str) -> Callable[[Callable], Callable]:
    """@hydra.main on the package's conf/<config_name>.yaml, with the command line checked
    first: config typos become one `error:` line and exit code 2 before Hydra starts."""

    def decorate(task_function: Callable) -> Callable:
        hydra_main = hydra.main(
            version_base="1.3", config_path=CONFIG_PATH, config_name=config_name
        )(task_function)

        @functools.wraps(hydra_main)
        def main() -> Any:
            register_resolvers()
            try:
                check_overrides(config_name, sys.argv[1:])
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            return hydra_main()

        return main

    return decorate


def _culprit(error: Exception, overrides: list[str]) -> str:
    """The override a composition error is about (Hydra quotes its key or the missing file)."""
    text, missing = str(error), getattr(error, "missing_cfg_file", None) or ""
    for override in reversed(overrides):
        key = override.split("=", 1)[0].lstrip("+~")
        if f"'{key}'" in text or missing.startswith(key.split("@")[0] + "/"):
            return override
    return " ".join(overrides)


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


def _remove_if_empty(cfg: DictConfig) -> None:
    """A command that stopped at a user error leaves no run directory behind when Hydra's own
    files (.hydra/, the log) are all it holds."""
    import shutil

    try:
        out = Path(cfg.paths.output_dir)
    except Exception:  # composed outside a Hydra run
        return
    if not out.is_dir() or out.resolve() == Path.cwd().resolve():
        return
    if all(p.name == ".hydra" or p.suffix == ".log" for p in out.iterdir()):
        logging.shutdown()  # the log file is open
        shutil.rmtree(out, ignore_errors=True)


def _host_memory(cfg: DictConfig) -> None:
    """The kept heap on CPU runs (train: trainer.accelerator, sample/evaluate: device), unless
    host_memory=false; read leniently here, the config check reports bad values."""
    from omegaconf import OmegaConf

    where = OmegaConf.select(
        cfg, "trainer.accelerator", default=None, throw_on_resolution_failure=False
    )
    where = where or OmegaConf.select(
        cfg, "device", default=None, throw_on_resolution_failure=False
    )
    line = configure_host_memory(cfg.get("host_memory", True), where)
    if line:
        log.info(line)


def run_task(task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run a task; return cfg.optimized_metric (for sweepers).

    In a sweep (-m) a failed job, whatever the exception, is logged, recorded as
    metrics.json {"status": "failed", ...} in its directory and scored NaN, so the other jobs go
    on. In a single run a user error is one `error:` line and exit 2; a bug keeps its traceback.
    """
    _host_memory(cfg)
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
            _remove_if_empty(cfg)
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
