"""A trained model as one object for notebooks and scripts: load a checkpoint (its config and
EMA weights) without Lightning or Hydra, then sample, inpaint or look at the trajectory.

    pipe = DiffusionPipeline.from_checkpoint("runs/.../last.ckpt", device="cuda")
    images = pipe.sample(16, labels=torch.arange(16) % 10, sampler={"name": "dpmpp_2m", "steps": 10})
"""

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from diffusion_lab.diffusion import GaussianDiffusion, diffusion_from_config, make_sampler
from diffusion_lab.errors import UserError, require
from diffusion_lab.models.contract import check_denoiser, check_self_condition, denoiser_kwargs
from diffusion_lab.sampling.core import Guide, generate, sampler_options, sampling_autocast


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A diffusion-lab checkpoint as plain data (torch.load with weights_only=True: no code
    from the file runs)."""
    path = Path(path)
    require(path.is_file(), f"ckpt_path={path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, objects that are not plain data
        raise UserError(
            f"ckpt_path={path} is not a readable checkpoint ({type(e).__name__})"
        ) from None
    require(
        isinstance(ckpt, dict) and "state_dict" in ckpt and "diffusion_lab_config" in ckpt,
        f"ckpt_path={path} is not a diffusion-lab checkpoint (no state_dict / config inside)",
    )
    return ckpt


def read_export(folder: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config, net weights) of an export folder; safetensors runs no code on load."""
    folder = Path(folder)
    weights, config = folder / "model.safetensors", folder / "config.json"
    require(
        weights.is_file() and config.is_file(),
        f"{folder} is not an export folder: it needs model.safetensors and config.json",
    )
    return json.loads(config.read_text()), load_file(weights)


def net_weights(state_dict: Mapping[str, Tensor], ema: bool = True) -> dict[str, Tensor]:
    """The denoiser's weights from a DiffusionModule state dict: the EMA copy when there is
    one (and `ema`), else the trained weights."""
    prefixes = ("ema.module.", "net.") if ema else ("net.",)
    for prefix in prefixes:
        weights = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if weights:
            return weights
    raise UserError("the checkpoint has no denoiser weights (no net.* or ema.module.* keys)")


def attribute_sizes_from_weights(weights: Mapping[str, Tensor], count: int) -> list[int]:
    """The number of values of each attribute, read off the embedding tables (one extra row
    each: the null token)."""
    sizes = []
    for i in range(count):
        key = f"cond.attr_embeddings.{i}.weight"
        require(key in weights, f"the checkpoint lists {count} attributes but has no {key}")
        sizes.append(int(weights[key].shape[0]) - 1)
    return sizes


def build_denoiser(
    config: Mapping[str, Any], attribute_sizes: list[int] | tuple[int, ...] = ()
) -> nn.Module:
    """The network of a run config: the class named by model._target_ (imported), built with
    the model's own keys and the data/conditioning arguments (models.contract.denoiser_kwargs)."""
    model = dict(config["model"])
    target = model.pop("_target_", None)
    require(
        isinstance(target, str) and "." in target,
        f"model._target_={target!r} must be a dotted class path",
    )
    module_name, _, cls_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"model._target_={target}: cannot import it ({e})") from None
    own = {k: v for k, v in model.items() if not k.startswith("_")}
    try:
        net = cls(**own, **denoiser_kwargs(config, attribute_sizes))
    except TypeError as e:
        raise UserError(f"model._target_={target}: {e}") from None
    check_denoiser(net)
    return net


@dataclass
class Trajectory:
    """The reverse process step by step: times[k], x_t[k] (after step k) and x0[k] (the
    prediction made at step k), each [steps, n, C, H, W] on the CPU; images in [-1, 1]."""

    times: list[float]
    x_t: Tensor
    x0: Tensor
    images: Tensor


class DiffusionPipeline:
    """A denoiser and its diffusion, ready to sample. Plain PyTorch: no Lightning, no Hydra.

    sampler: the default sampler settings (a checkpoint's `sampler` config); every call can
    override them. guidance_scale: the default classifier-free guidance scale. precision: the
    training precision ("32", "bf16-mixed", "16-mixed"), used as in training's sample grids.
    channels_last: run the net in channels-last memory format (as the run trained).
    """

    def __init__(
        self,
        net: nn.Module,
        diffusion: GaussianDiffusion,
        sampler: Mapping[str, Any] | None = None,
        guidance_scale: float = 1.0,
        precision: str = "32",
        config: Mapping[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        check_denoiser(net)
        check_self_condition(net, diffusion.self_condition)
        device = next(net.parameters()).device
        self.net = net.eval()
        self.diffusion = diffusion.to(device)
        self.sampler = dict(sampler or {"name": "ddim", "steps": 50, "eta": 0.0})
        make_sampler(diffusion, self.sampler)  # a bad configured sampler fails here
        self.guidance_scale = float(guidance_scale)
        self.precision = str(precision)
        self.config = dict(config or {})
        # as in training: the same memory format gives the same convolutions, bit for bit
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: torch.device | str = "cpu", ema: bool = True
    ) -> "DiffusionPipeline":
        """Rebuild the net (EMA weights by default) and diffusion a checkpoint was trained with.
        `path` may also be an export folder (model.safetensors + config.json, written at the
        end of training into <run>/export/): its weights are the EMA copy when there was one."""
        if Path(path).is_dir():
            config, weights = read_export(path)
        else:
            ckpt = read_checkpoint(path)
            config = ckpt["diffusion_lab_config"]
            weights = net_weights(ckpt["state_dict"], ema)
        attributes = list((config.get("conditioning") or {}).get("attributes") or [])
        net = build_denoiser(config, attribute_sizes_from_weights(weights, len(attributes)))
        try:
            net.load_state_dict(weights)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise UserError(
                f"ckpt_path={path}: the weights do not fit the model config "
                f"({first[1].strip() if len(first) > 1 else first[0]})"
            ) from None
        net.to(device)
        conditioning = config.get("conditioning") or {}
        return cls(
            net,
            diffusion_from_config(config),
            sampler=config.get("sampler"),
            guidance_scale=float(conditioning.get("guidance_scale", 1.0)),
            precision=str((config.get("trainer") or {}).get("precision", "32")),
            config=config,
            channels_last=bool(config.get("channels_last", False)),
        )

    # ---- properties ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def num_classes(self) -> int:
        return self.net.cond.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.net.in_channels, self.net.image_size, self.net.image_size)

    def to(self, device: torch.device | str) -> "DiffusionPipeline":
        self.net.to(device)
        self.diffusion.to(device)
        return self

    def sampler_for(self, sampler: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The settings a call with `sampler` uses (over the configured ones)."""
        return sampler_options(self.sampler, sampler)

    def nfe(self, sampler: Mapping[str, Any] | None = None) -> int:
        """Network calls per image (classifier-free guidance doubles them)."""
        return make_sampler(self.diffusion, self.sampler_for(sampler)).nfe

    # ---- sampling ------------------------------------------------------------------------
    def _generate(self, n: int, sampler, guidance_scale, **kwargs: Any) -> Tensor:
        return generate(
            self.net,
            self.diffusion,
            n,
            sampler=self.sampler_for(sampler),
            guidance_scale=self.guidance_scale if guidance_scale is None else guidance_scale,
            autocast=lambda: sampling_autocast(self.precision, self.device),
            channels_last=self.channels_last,
            **kwargs,
        )

    def sample(
        self,
        n: int,
        labels: Tensor | None = None,
        attrs: Tensor | None = None,
        sampler: Mapping[str, Any] | None = None,
        seed: int | None = 0,
        guidance_scale: float | None = None,
        batch_size: int | None = None,
        guide: Guide | None = None,
    ) -> Tensor:
        """n images [n, C, H, W] in [-1, 1] (on the pipeline's device). labels default to the
        classes in turn; image i's noise comes from (seed, i), whatever batch_size."""
        return self._generate(
            n,
            sampler,
            guidance_scale,
            labels=labels,
            attrs=attrs,
            seed=seed,
            batch_size=batch_size,
            guide=guide,
        )

    def inpaint(
        self,
        known: Tensor,
        mask: Tensor,
        labels: Tensor | None = None,
        attrs: Tensor | None = None,
        sampler: Mapping[str, Any] | None = None,
        seed: int | None = 0,
        guidance_scale: float | None = None,
        batch_size: int | None = None,
    ) -> Tensor:
        """Fill the pixels where mask == 0 ([n, 1, H, W], 1 = known) of `known` ([n, C, H, W]
        in [-1, 1]); the known pixels come back exactly. A mask-conditioned model uses any
        sampler; any other model uses RePaint."""
        return self._generate(
            len(known),
            sampler,
            guidance_scale,
            labels=labels,
            attrs=attrs,
            known=known,
            mask=mask,
            seed=seed,
            batch_size=batch_size,
        )

    def trajectory(
        self,
        n: int = 4,
        labels: Tensor | None = None,
        attrs: Tensor | None = None,
        sampler: Mapping[str, Any] | None = None,
        seed: int | None = 0,
        guidance_scale: float | None = None,
        known: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Trajectory:
        """Every step of the reverse process for n images (one batch)."""
        times, xs, x0s = [], [], []

        def record(i: int, t: float, x: Tensor, x0: Tensor) -> None:
            times.append(t)
            xs.append(x.float().clamp(-1, 1).cpu())
            x0s.append(x0.float().clamp(-1, 1).cpu())

        images = self._generate(
            n if known is None else len(known),
            sampler,
            guidance_scale,
            labels=labels,
            attrs=attrs,
            known=known,
            mask=mask,
            seed=seed,
            callback=record,
        )
        return Trajectory(times, torch.stack(xs), torch.stack(x0s), images.cpu())
