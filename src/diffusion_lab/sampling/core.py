"""Drawing samples from a denoiser: conditioning, classifier-free guidance, self-conditioning,
an optional guide (e.g. CLIP), inpainting, then the sampler. Plain PyTorch (no Lightning, no
Hydra): the LightningModule, the commands and the notebook pipeline all call `generate`.
"""

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from diffusion_lab.diffusion import Diffusion
from diffusion_lab.diffusion.gaussian import DenoiseFn
from diffusion_lab.diffusion.guidance import bind, classifier_free, keep_known
from diffusion_lab.diffusion.noise import ImageNoise
from diffusion_lab.diffusion.repaint import RePaint
from diffusion_lab.diffusion.samplers import OnePass, Sampler, StepCallback, make_sampler
from diffusion_lab.errors import require
from diffusion_lab.hardware import cpu_has_fast_bf16
from diffusion_lab.models import Cond
from diffusion_lab.models.contract import check_denoiser

Guide = Callable[[DenoiseFn], DenoiseFn]
DEFAULT_SAMPLER = {"name": "ddim", "steps": 50, "eta": 0.0}


class SelfConditioning:
    """Sampling with a self-conditioned network (Chen et al. 2022): `feed` wraps the network
    so that every call gets the x0 estimate `track` saw last (none before the first step), so
    each reverse step refines the previous step's estimate. One holder serves both branches
    of classifier-free guidance, which then see the guided estimate."""

    def __init__(self, diffusion: Diffusion) -> None:
        self.diffusion = diffusion
        self.x0: Tensor | None = None

    def feed(self, net: nn.Module) -> Callable[[Tensor, Tensor, Cond | None], Tensor]:
        return lambda x, t, cond: net(x, t, replace(cond or Cond(), self_cond=self.x0))

    def track(self, denoise: DenoiseFn) -> DenoiseFn:
        def tracked(x: Tensor, t: Tensor) -> Tensor:
            out = denoise(x, t)
            self.x0 = self.diffusion.split_prediction(out, x, t)[0].to(x.dtype)
            return out

        return tracked


def sampler_options(
    configured: Mapping[str, Any] | None, requested: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The sampler settings to use: `requested` over `configured` (e.g. a checkpoint's
    `sampler` config). When `requested` names another sampler, the configured settings do
    not carry over (ddim's eta means nothing to heun)."""
    configured, requested = dict(configured or DEFAULT_SAMPLER), dict(requested or {})
    name = requested.get("name", configured.get("name", "ddim"))
    base = configured if configured.get("name", "ddim") == name else {}
    return {**base, **requested, "name": name}


def sampling_autocast(
    precision: str | int | None, device: torch.device | str
) -> contextlib.AbstractContextManager:
    """The network under a run's mixed precision (the sampler math stays float32): on a GPU
    16-mixed or bf16-mixed; on the CPU bf16-mixed only where this CPU is fast at bf16 (a
    checkpoint trained in bf16 samples in float32 where bf16 is not measured fast)."""
    precision, device = str(precision or "32"), torch.device(device)
    bf16 = precision.startswith("bf16")
    if "mixed" not in precision or (device.type == "cpu" and not (bf16 and cpu_has_fast_bf16())):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if bf16 else torch.float16)


def check_conditioning(
    net: nn.Module, labels: Tensor | None, attrs: Tensor | None, guidance_scale: float
) -> None:
    """Labels, attributes and the guidance scale against what the net was trained for."""
    num_classes, sizes = net.cond.num_classes, tuple(net.cond.attribute_sizes)
    if labels is not None:
        require(num_classes > 0, "class=...: this model was trained without class conditioning")
        bad = labels[(labels < 0) | (labels >= num_classes)]
        require(
            len(bad) == 0,
            f"class={bad[0].item() if len(bad) else ''} is outside the trained range "
            f"0..{num_classes - 1}",
        )
    if attrs is not None:
        require(
            attrs.shape[1] == len(sizes),
            f"got {attrs.shape[1]} attribute values; the model was trained with {len(sizes)}",
        )
        for i, size in enumerate(sizes):
            require(
                bool(((attrs[:, i] >= 0) & (attrs[:, i] < size)).all()),
                f"attribute {i} must be in 0..{size - 1}",
            )
    if guidance_scale != 1.0:
        require(
            num_classes > 0 or len(sizes) > 0,
            f"guidance_scale={guidance_scale}: classifier-free guidance needs a class- or "
            "attribute-conditioned model (this one is unconditional)",
        )


def plan(
    net: nn.Module,
    diffusion: Diffusion,
    sampler: Mapping[str, Any] | None,
    inpainting: bool,
) -> Sampler:
    """The sampler that will run, with every setting checked (before any network call).

    Inpainting with a net that is not mask-conditioned is RePaint (the one way such a net
    can inpaint), on the requested sampler's grid; a mask-conditioned net inpaints with any
    sampler (known pixels put into every step's x0). `repaint` without a mask is plain
    sampling on RePaint's schedule; `onepass` is for inpainting only.
    """
    chosen = make_sampler(diffusion, sampler)
    mask_conditioned = bool(net.cond.mask_channels)
    self_conditioned = bool(net.cond.self_cond_channels)
    if isinstance(chosen, OnePass):
        require(inpainting, "sampler.name=onepass is for inpainting (known= and mask=) only")
        passes = int(chosen.options["passes"])
        require(
            passes == 1 or self_conditioned,
            f"sampler.passes={passes}: more than one pass refines the previous estimate, "
            "which needs a model trained with diffusion.self_condition=true",
        )
    if inpainting and not mask_conditioned and not isinstance(chosen, RePaint):
        require(
            diffusion.formulation == "ddpm",
            "inpainting with a diffusion.formulation=edm model needs a mask-conditioned model "
            "(conditioning=inpaint): a plain model inpaints through RePaint, which is DDPM-only",
        )
        grid = getattr(chosen, "grid", None)
        steps = len(grid) if grid is not None else diffusion.num_timesteps
        spacing = chosen.options.get("spacing", "linspace")
        return RePaint(diffusion, steps=steps, spacing=spacing)
    return chosen


def _conditioned_denoiser(
    net: nn.Module,
    diffusion: Diffusion,
    cond: Cond,
    guidance_scale: float,
    estimate: SelfConditioning | None,
) -> DenoiseFn:
    # EDM: the network inside its preconditioning, so guidance and inpainting see D(x; sigma)
    model = diffusion.denoiser(net if estimate is None else estimate.feed(net))
    if cond.labels is None and cond.attrs is None and cond.mask is None:
        return bind(model, None)
    null = cond.to_null(net.cond.num_classes, tuple(net.cond.attribute_sizes))
    return classifier_free(bind(model, cond), bind(model, null), guidance_scale)


def _in_channels_last(denoise: DenoiseFn) -> DenoiseFn:
    return lambda x, t: denoise(x.contiguous(memory_format=torch.channels_last), t)


def generate(
    net: nn.Module,
    diffusion: Diffusion,
    n: int,
    *,
    labels: Tensor | None = None,
    attrs: Tensor | None = None,
    sampler: Mapping[str, Any] | None = None,
    guidance_scale: float = 1.0,
    seed: int | None = 0,
    callback: StepCallback | None = None,
    known: Tensor | None = None,
    mask: Tensor | None = None,
    guide: Guide | None = None,
    batch_size: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    channels_last: bool = False,
) -> Tensor:
    """n images in [-1, 1] from `net` (put in eval mode for the call) and `diffusion`.

    labels [n] / attrs [n, A]: class and attribute conditioning (default: the classes in
    turn, attribute value 0); guidance_scale: classifier-free guidance (1 = conditional).
    sampler: a `sampler` config (`name` and its settings, see diffusion.samplers); missing
    keys take that sampler's defaults.
    Inpainting: `known` [n, C, H, W] in [-1, 1] and `mask` [n, 1, H, W] (1 = known); the
    known pixels go into every step's predicted x0 (RePaint: into every x_t) and are pasted
    back exactly at the end. A mask-conditioned net asked for plain samples gets an
    all-unknown mask.
    guide: wraps the (classifier-free guided) denoiser, e.g. with score guidance; sampling
    then runs under no_grad instead of inference_mode, so the guide can take gradients.
    seed: the noise of image i comes from (seed, i), so the images do not depend on
    batch_size (None: all n in one batch); callback(step, t, x_t, x0) is called per batch.
    autocast: a context factory for the network's precision (see sampling_autocast).
    """
    check_denoiser(net)
    device = next(net.parameters()).device
    c, s = net.in_channels, net.image_size
    num_classes, sizes = net.cond.num_classes, tuple(net.cond.attribute_sizes)
    mask_conditioned = bool(net.cond.mask_channels)
    require(isinstance(n, int) and n >= 1, f"n={n} must be >= 1")
    batch_size = n if batch_size is None else int(batch_size)
    require(batch_size >= 1, f"batch_size={batch_size} must be >= 1")
    if labels is None and num_classes:
        labels = torch.arange(n) % num_classes  # cycle through the classes
    if attrs is None and sizes:
        attrs = torch.zeros(n, len(sizes), dtype=torch.long)
    check_conditioning(net, labels, attrs, guidance_scale)
    if mask is not None or known is not None:
        require(
            mask is not None and known is not None,
            "inpainting needs both known= and mask= (1 = known pixel)",
        )
        require(
            tuple(known.shape) == (n, c, s, s) and tuple(mask.shape) == (n, 1, s, s),
            f"inpainting: known must be [{n}, {c}, {s}, {s}] and mask [{n}, 1, {s}, {s}], "
            f"got {tuple(known.shape)} and {tuple(mask.shape)}",
        )
    chosen = plan(net, diffusion, sampler, inpainting=mask is not None)
    if mask is not None:
        known, mask = known.to(device).float(), (mask.to(device) > 0.5).float()
    elif mask_conditioned or isinstance(chosen, RePaint):
        known = torch.zeros(n, c, s, s, device=device)
        mask = torch.zeros(n, 1, s, s, device=device)
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    labels = labels.to(device) if labels is not None else None
    attrs = attrs.to(device) if attrs is not None else None

    was_training = net.training
    net.eval()
    grad_mode = torch.no_grad() if guide is not None else torch.inference_mode()
    out = []
    try:
        with grad_mode, (autocast or contextlib.nullcontext)():
            for start in range(0, n, batch_size):
                part = slice(start, min(start + batch_size, n))
                cond = Cond(
                    labels=labels[part] if labels is not None else None,
                    attrs=attrs[part] if attrs is not None else None,
                    mask=mask[part] if mask_conditioned else None,
                    known=known[part] if mask_conditioned else None,
                )
                m = part.stop - part.start
                noise = ImageNoise(seed, range(part.start, part.stop), device)
                estimate = SelfConditioning(diffusion) if diffusion.self_condition else None
                denoise = _conditioned_denoiser(net, diffusion, cond, guidance_scale, estimate)
                if guide is not None:
                    denoise = guide(denoise)
                if channels_last:
                    denoise = _in_channels_last(denoise)
                if estimate is not None:
                    denoise = estimate.track(denoise)
                x_T = diffusion.prior_std * noise(torch.empty(m, c, s, s, device=device))
                if isinstance(chosen, RePaint):
                    x = chosen.run(
                        denoise, x_T, noise, callback, known=known[part], mask=mask[part]
                    )
                else:
                    if mask is not None and not isinstance(chosen, OnePass):
                        denoise = keep_known(diffusion, denoise, known[part], mask[part])
                    x = chosen.run(denoise, x_T, noise, callback)
                out.append(x)
    finally:
        net.train(was_training)
    x = torch.cat(out).clamp(-1, 1)
    if mask is not None:
        x = mask * known + (1 - mask) * x  # the known pixels, exactly
    return x
