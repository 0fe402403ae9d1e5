"""Typed checks of a composed config before any work: every user-settable value is checked
against the type its consumer declares, and every key must be one its consumer reads.

Two sources of truth, so nothing is declared twice: the top-level keys of `train` as an
OmegaConf structured config (`TrainKeys`), and for every node that builds an object
(`_target_`, the diffusion and schedule settings) the signature of what it builds. A key
the object does not take, or a value of the wrong type, is one line naming the key and what
is allowed.
"""

import collections.abc
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import get_method
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ValidationError

from diffusion_lab.diffusion import FORMULATIONS, EDMDiffusion, GaussianDiffusion, schedules
from diffusion_lab.errors import UserError, require


@dataclass
class TrainKeys:
    """The top-level scalars of conf/train.yaml and their types (groups are checked below)."""

    task_name: str = "train"
    seed: int = 42
    ckpt_path: str | None = None
    ema_decay: float | None = 0.999
    lr_warmup_steps: int = 0
    monitor: str = "val/loss"
    monitor_mode: str = "min"  # min | max (checked in app.train)
    early_stopping_patience: int | None = None
    timestep_buckets: Any = 4  # a count or a list of edges (checked by the module)
    channels_last: bool = True
    compile: bool = False
    host_memory: bool = True
    optimized_metric: str | None = None
    extra: dict = field(default_factory=dict)


def check_top_level(cfg: DictConfig) -> None:
    values = {k: cfg[k] for k in TrainKeys.__dataclass_fields__ if k in cfg and k != "extra"}
    try:
        OmegaConf.merge(OmegaConf.structured(TrainKeys), values)
    except ValidationError as e:
        key = e.full_key or e.key
        wanted = TrainKeys.__dataclass_fields__[str(key)].type
        raise UserError(
            f"{key}={OmegaConf.select(cfg, str(key))!r} must be {_type_name(wanted)}"
        ) from None


def _literals(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [v for a in typing.get_args(annotation) for v in _literals(a)]
    return []


def _type_name(annotation: Any) -> str:
    choices = _literals(annotation)
    if choices:  # Lightning's precision: several Literal sets in a Union
        return "one of " + ", ".join(dict.fromkeys(str(c) for c in choices))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if annotation is type(None):
        return "null"
    if annotation in names:
        return names[annotation]
    origin = typing.get_origin(annotation) or annotation
    if origin in (list, tuple, collections.abc.Sequence):
        return "a list"
    return getattr(annotation, "__name__", str(annotation))


def fits(value: Any, annotation: Any) -> bool | None:
    """Whether a config value fits a type annotation; None where the annotation says too
    little to tell (custom classes, callables, Any)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return value in typing.get_args(annotation) or str(value) in map(
            str, typing.get_args(annotation)
        )
    if origin in (typing.Union, types.UnionType):
        results = [fits(value, a) for a in typing.get_args(annotation)]
        return None if None in results and True not in results else any(results)
    if annotation is type(None):
        return value is None
    if value is None:
        return False
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float or annotation is torch.Tensor:  # a tensor argument takes a number
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    base = origin or annotation
    if base in (list, tuple, collections.abc.Sequence):
        return isinstance(value, ListConfig | list | tuple)
    if base in (dict, collections.abc.Mapping):
        return isinstance(value, DictConfig | dict)
    return None


def _signature(target: Any) -> inspect.Signature:
    try:
        return inspect.signature(target, eval_str=True)
    except (NameError, TypeError, ValueError):  # unresolvable annotations: names only
        return inspect.signature(target)


def _parameters(target: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """A callable's keyword parameters (annotations evaluated) and whether it takes **kwargs.
    A class whose __init__ passes **kwargs on to its base also takes the base's parameters."""
    chain = (
        [c.__init__ for c in inspect.getmro(target) if "__init__" in vars(c)]
        if inspect.isclass(target)
        else [target]
    )
    params: dict[str, inspect.Parameter] = {}
    for fn in chain:
        sig = _signature(fn)
        for n, p in sig.parameters.items():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in params:
                params[n] = p
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            return params, False
        if fn is object.__init__:
            break
    return params, True


def check_node(node: DictConfig, key: str, target: Any, what: str, skip: tuple = ()) -> None:
    """Every key of `node` is a parameter of `target` and fits its annotation."""
    params, open_kwargs = _parameters(target)
    for name in map(str, node.keys()):
        if name.startswith("_") or name in skip:
            continue
        if name not in params:
            if open_kwargs:
                continue
            allowed = ", ".join(p for p in params if p not in skip and p != "self")
            raise UserError(f"{key}.{name} is not a setting of {what}; its settings: {allowed}")
        if OmegaConf.is_interpolation(node, name):  # resolved at run time (paths, resolvers)
            continue
        ok = fits(node[name], params[name].annotation)
        require(
            ok is not False,
            f"{key}.{name}={node[name]!r} must be {_type_name(params[name].annotation)}",
        )
        if isinstance(node[name], ListConfig) and len(node[name]) == 0 and key == "model":
            raise UserError(f"{key}.{name}=[] must list at least one value")


def check_targets(cfg: DictConfig, keys: tuple[str, ...]) -> None:
    """Nodes that name what they build (`_target_`), checked against its signature."""
    for key in keys:
        node = OmegaConf.select(cfg, key)
        if not isinstance(node, DictConfig):
            continue
        nodes = (
            [(f"{key}.{k}", v) for k, v in node.items() if isinstance(v, DictConfig)]
            if "_target_" not in node
            else [(key, node)]
        )
        for name, sub in nodes:
            if "_target_" not in sub:
                continue
            try:
                target = get_method(str(sub._target_))
            except Exception:
                raise UserError(
                    f"{name}._target_={sub._target_}: cannot import it (is its package installed "
                    "and on the path?)"
                ) from None
            # the model also gets the data shape and conditioning from build_net; a cosine
            # schedule's T_max (null: the run's length) is filled in by the module
            skip = ("in_channels", "image_size", "num_classes", "attribute_sizes", "T_max")
            check_node(sub, name, target, str(sub._target_).rsplit(".", 1)[-1], skip)


def check_diffusion(node: DictConfig) -> None:
    """`diffusion.formulation` (ddpm when absent) names the class the other keys go to."""
    formulation = node.get("formulation", "ddpm")
    require(
        formulation in FORMULATIONS,
        f"diffusion.formulation={formulation!r} is not one of {list(FORMULATIONS)}",
    )
    if formulation == "edm":
        # diffusion=edm selects the node with EDM's keys; diffusion.formulation=edm alone
        # keeps DDPM's (objective, ...), which this names
        what = "the edm diffusion (select it with diffusion=edm)"
        check_node(node, "diffusion", EDMDiffusion, what, skip=("formulation",))
    else:
        check_node(node, "diffusion", GaussianDiffusion, "the diffusion", ("betas", "formulation"))


def check_train_config(cfg: DictConfig) -> None:
    """Everything `train` reads, checked before any work."""
    check_top_level(cfg)
    check_diffusion(cfg.diffusion)
    schedule = cfg.schedule
    betas = getattr(schedules, f"{schedule.name}_betas", None)
    if betas is not None:
        check_node(schedule, "schedule", betas, f"the {schedule.name} schedule", skip=("name",))
    check_targets(
        cfg,
        ("data", "model", "optimizer", "lr_scheduler", "trainer", "callbacks", "logger"),
    )
