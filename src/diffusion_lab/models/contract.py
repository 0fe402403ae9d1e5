"""The denoiser contract: what a network must expose to be trained, sampled and conditioned.

A denoiser is an nn.Module with
- `forward(x_t, t, cond)` -> a tensor shaped like x_t: the prediction in the parametrisation
  of `diffusion.objective` (eps, x0 or v). t is [B] timesteps, long on the training grid and
  float on a Karras sampling grid (a sinusoidal embedding of t.float() takes both); cond is
  a `Cond` or None.
- `in_channels` and `image_size` (int): the shape of x_t is [B, in_channels, image_size,
  image_size].
- `cond`: what it can be conditioned on, with `num_classes` (int, 0 = no labels),
  `attribute_sizes` (tuple of int), `mask_channels` (int, > 0 for an inpainting model that
  takes the known image and the mask) and `self_cond_channels` (int, > 0 when it takes its
  previous x0 estimate). `CondEmbedding.for_images(...)` builds one from the constructor
  arguments below.
- a constructor taking `denoiser_kwargs(config, ...)`: in_channels, image_size, num_classes,
  attribute_sizes, mask_conditioning, self_condition (plus its own keys from the model config).
"""

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from diffusion_lab.errors import UserError
from diffusion_lab.models.conditioning import Cond

CONDITIONING_ATTRIBUTES = {
    "num_classes": int,
    "attribute_sizes": tuple,
    "mask_channels": int,
    "self_cond_channels": int,
}


class ConditioningInfo(Protocol):
    num_classes: int
    attribute_sizes: tuple[int, ...]
    mask_channels: int
    self_cond_channels: int


@runtime_checkable
class Denoiser(Protocol):
    in_channels: int
    image_size: int
    cond: ConditioningInfo

    def __call__(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor: ...


def _accepts_three_arguments(forward: Any) -> bool:
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return True  # a builtin or compiled forward: nothing to check
    params = list(sig.parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


def check_denoiser(net: nn.Module, key: str = "model") -> None:
    """Raise a one-line UserError if `net` does not follow the denoiser contract."""
    name = type(net).__name__
    where = f"{key} ({name}) does not follow the denoiser contract (diffusion_lab.models.contract)"
    if not isinstance(net, nn.Module):
        raise UserError(f"{where}: it is not a torch.nn.Module")
    for attr in ("in_channels", "image_size"):
        value = getattr(net, attr, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{where}: it needs an integer attribute {attr} >= 1, got {value!r}")
    cond = getattr(net, "cond", None)
    if cond is None:
        raise UserError(
            f"{where}: it needs an attribute `cond` (e.g. CondEmbedding.for_images(...)) "
            f"with {', '.join(CONDITIONING_ATTRIBUTES)}"
        )
    for attr, kind in CONDITIONING_ATTRIBUTES.items():
        value = getattr(cond, attr, None)
        if not isinstance(value, kind):
            raise UserError(
                f"{where}: cond.{attr} must be {kind.__name__}, got {type(value).__name__}"
            )
    if not _accepts_three_arguments(net.forward):
        raise UserError(f"{where}: forward must take (x_t, t, cond)")


def check_self_condition(net: nn.Module, self_condition: bool, key: str = "model") -> None:
    """A self-conditioned diffusion needs a net built with self_condition=True, and back."""
    has = bool(getattr(net.cond, "self_cond_channels", 0))
    if has != bool(self_condition):
        raise UserError(
            f"{key} ({type(net).__name__}) was built with self_condition={has} but "
            f"diffusion.self_condition={bool(self_condition)}"
        )


def denoiser_kwargs(
    config: Mapping[str, Any], attribute_sizes: Sequence[int] = ()
) -> dict[str, Any]:
    """The constructor arguments a denoiser gets from a run config (a plain dict or a
    DictConfig), besides its own model keys: the data shape and what it is conditioned on.

    `attribute_sizes`: the number of values of each of `conditioning.attributes`, in order
    (the data layer knows them; a checkpoint's weights tell them too).
    """
    data, c = config["data"], config["conditioning"]
    diffusion = config.get("diffusion") or {}
    attributes = list(c.get("attributes") or [])
    sizes = [int(s) for s in attribute_sizes]
    if len(sizes) != len(attributes):
        raise UserError(
            f"conditioning.attributes={attributes}: {len(sizes)} attribute sizes given for "
            f"{len(attributes)} attributes"
        )
    return {
        "in_channels": int(data["channels"]),
        "image_size": int(data["image_size"]),
        "num_classes": int(data.get("num_classes") or 0) if c.get("use_labels") else 0,
        "attribute_sizes": sizes,
        "mask_conditioning": bool(c.get("mask", False)),
        "self_condition": bool(diffusion.get("self_condition", False)),
    }
