"""The LightningModule: a denoiser + a diffusion (DDPM's GaussianDiffusion or EDMDiffusion) +
the optimiser, EMA and sampling."""

import contextlib
import functools
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torchmetrics import Metric

from diffusion_lab.diffusion import Diffusion
from diffusion_lab.diffusion.guidance import bind
from diffusion_lab.diffusion.samplers import check_formulation
from diffusion_lab.errors import UserError, require
from diffusion_lab.models import Cond
from diffusion_lab.sampling import (
    Guide,
    StepCallback,
    check_conditioning,
    sampler_options,
    sampling_autocast,
)
from diffusion_lab.sampling import generate as generate_samples
from diffusion_lab.training.measure import one_image_input


class EMA(AveragedModel):
    """An exponential moving average of the net whose decay ramps up as
    min(decay, (1 + n) / (10 + n)), so early sample grids are not dominated by the random initial
    weights. torch's AveragedModel (its `module.*` / `n_averaged` checkpoint keys) with an update
    that keeps a host copy of n_averaged: torch's update reads it from the device twice a step,
    a host synchronisation per step on a GPU."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        super().__init__(net, use_buffers=True)
        self.decay = decay
        self.requires_grad_(False)
        self._count: int | None = 0  # None: read n_averaged once (after a checkpoint load)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._count = None

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self._count is None:
            self._count = int(self.n_averaged)
        pairs = zip(
            [*self.module.parameters(), *self.module.buffers()],
            [*model.parameters(), *model.buffers()],
        )
        averaged, latest = [], []
        for e, p in pairs:
            if self._count == 0 or not torch.is_floating_point(e):  # integer buffers are copied
                e.copy_(p)
            else:
                averaged.append(e)
                latest.append(p.detach())
        if averaged:
            n = self._count
            torch._foreach_lerp_(averaged, latest, 1 - min(self.decay, (1 + n) / (10 + n)))
        self.n_averaged += 1
        self._count += 1


def bucket_edges(num_timesteps: int, buckets: int | list[int] | tuple[int, ...]) -> list[int]:
    """Timestep bucket edges [0, ..., T]: `buckets` equal ones, or the given edges (e.g. [0, 100,
    200, 300]: t < 100, 100 <= t < 200, t >= 200 at T=300)."""
    if isinstance(buckets, int):
        require(buckets >= 1, f"timestep_buckets={buckets} must be >= 1 or a list of edges")
        return [round(i * num_timesteps / buckets) for i in range(buckets + 1)]
    edges = [int(e) for e in buckets]
    require(
        len(edges) >= 2
        and edges[0] == 0
        and edges[-1] == num_timesteps
        and all(a < b for a, b in zip(edges, edges[1:])),
        f"timestep_buckets={edges} must rise from 0 to schedule.timesteps={num_timesteps}",
    )
    return edges


def loss_buckets(
    diffusion: Diffusion, buckets: int | list[int] | tuple[int, ...]
) -> tuple[list[float], list[str]]:
    """(edges, metric names) of the per-bucket losses: timestep buckets for DDPM; for EDM,
    which has no timesteps, noise-level buckets that each hold an equal share of its
    log-normal sigma draws (named by their sigma range)."""
    if diffusion.formulation == "ddpm":
        edges = bucket_edges(diffusion.num_timesteps, buckets)
        return edges, [f"loss_t{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])]
    require(
        isinstance(buckets, int) and not isinstance(buckets, bool) and buckets >= 1,
        f"timestep_buckets={buckets}: diffusion.formulation=edm has no timesteps; give a number "
        "of buckets (>= 1), each an equal share of its noise levels",
    )
    edges = diffusion.sigma_bucket_edges(buckets)
    return edges, [f"loss_sigma{lo:.3g}-{hi:.3g}" for lo, hi in zip(edges, edges[1:])]


class BucketMeans(Metric):
    """Mean loss per timestep (EDM: sigma) bucket [edges[i], edges[i+1]) over an epoch: one update per step
    and one log per epoch (a `self.log` per bucket and step cost ~1 ms each, 3% of a CPU step).
    An empty bucket's mean is nan."""

    full_state_update = False

    def __init__(self, edges: list[int] | list[float]) -> None:
        super().__init__()
        self.register_buffer("inner_edges", torch.tensor(edges[1:-1]), persistent=False)
        n = len(edges) - 1
        self.add_state("sums", torch.zeros(n), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(n), dist_reduce_fx="sum")

    def update(self, losses: Tensor, t: Tensor) -> None:
        bucket = torch.bucketize(t, self.inner_edges, right=True)
        # one-hot sums rather than index_add_: deterministic on GPUs too; a product and a sum,
        # not a matmul, which autocast would run in half precision
        one_hot = (bucket[:, None] == torch.arange(len(self.sums), device=t.device)).float()
        self.sums += (losses.float()[:, None] * one_hot).sum(0)
        self.counts += one_hot.sum(0)

    def compute(self) -> Tensor:
        return self.sums / self.counts


class DiffusionModule(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        diffusion: Diffusion,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., Any] | None = None,
        ema_decay: float | None = 0.999,
        p_uncond: float = 0.0,
        guidance_scale: float = 1.0,
        sampler: dict | None = None,
        timestep_buckets: int | list[int] = 4,
        channels_last: bool = False,
        compile: bool = False,
        config: dict | None = None,
        inpaint_loss: str = "masked",
        lr_warmup_steps: int = 0,
        lr_monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        require(
            inpaint_loss in ("masked", "all"),
            f"conditioning.loss={inpaint_loss!r} is not one of ['masked', 'all']",
        )
        require(0 <= p_uncond < 1, f"conditioning.p_uncond must be in [0, 1), got {p_uncond}")
        require(
            ema_decay is None or 0 < ema_decay < 1,
            f"ema_decay must be in (0, 1) or null, got {ema_decay}",
        )
        self.net = net
        self.diffusion = diffusion
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        require(lr_warmup_steps >= 0, f"lr_warmup_steps={lr_warmup_steps} must be >= 0")
        self.lr_warmup_steps = int(lr_warmup_steps)
        self.lr_monitor = lr_monitor  # the metric lr_scheduler=plateau steps on
        self.p_uncond = p_uncond
        self.guidance_scale = guidance_scale
        self.sampler = dict(sampler or {"name": "ddim", "steps": 50, "eta": 0.0})
        # before training, not at the first sample grid: e.g. an edm run with train.yaml's ddim
        check_formulation(diffusion, self.sampler.get("name", "ddim"))
        self.channels_last = channels_last
        self.inpaint_loss = inpaint_loss
        self.config = config  # the resolved run config, stored in every checkpoint
        self._first_bad: Tensor | None = None  # (step, loss) of the first non-finite loss
        self.edges, self.bucket_names = loss_buckets(diffusion, timestep_buckets)
        # keys are not "train"/"val": nn.Module has a train() method
        self.bucket_loss = nn.ModuleDict(
            {f"{stage}_buckets": BucketMeans(self.edges) for stage in ("train", "val")}
        )
        self.ema = None
        if ema_decay is not None:
            self.ema = EMA(net, ema_decay)  # a submodule: it lands in checkpoints
        if compile:
            net.compile()  # in place: checkpoint keys stay the same
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if hasattr(net, "image_size") and not compile:
            # one image through forward() lets Lightning's model summary count the net's FLOPs
            # (not with compile: the summary's batch of 1 would cost a second compilation)
            self.example_input_array = one_image_input(net)

    def forward(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        """The net's prediction for noisy images x at integer timesteps t."""
        return self.net(x, t, cond)

    # ---- conditioning ------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.net.cond.num_classes

    @property
    def attribute_sizes(self) -> tuple[int, ...]:
        return self.net.cond.attribute_sizes

    @property
    def mask_conditioned(self) -> bool:
        """True when the net takes the known image and the mask as extra input channels."""
        return bool(getattr(self.net.cond, "mask_channels", 0))

    def cond_from_batch(
        self, batch: dict[str, Tensor], drop: bool, generator: torch.Generator | None = None
    ) -> Cond | None:
        labels = batch["label"] if self.num_classes else None
        attrs = batch.get("attrs") if self.attribute_sizes else None
        mask = known = None
        if self.mask_conditioned:
            require(
                "mask" in batch,
                "conditioning=inpaint needs masks in the data: set conditioning.masks "
                "(the data config's `masks` key)",
            )
            mask, known = batch["mask"].to(batch["image"].dtype), batch["image"]
        if labels is None and attrs is None and mask is None:
            return None
        if drop and self.p_uncond > 0:
            # classifier-free guidance: train the unconditional branch via the null tokens
            u = torch.rand(len(batch["image"]), device=self.device, generator=generator)
            drop = u < self.p_uncond
            return Cond(labels=labels, attrs=attrs, mask=mask, known=known).to_null(
                self.num_classes, self.attribute_sizes, where=drop
            )
        return Cond(labels=labels, attrs=attrs, mask=mask, known=known)

    # ---- training ----------------------------------------------------------------------------
    def _images(self, batch: dict[str, Tensor]) -> Tensor:
        x = batch["image"]
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _step(self, batch: dict[str, Tensor], stage: str, net: nn.Module, generator=None) -> Tensor:
        x0 = self._images(batch)
        cond = self.cond_from_batch(batch, drop=stage == "train", generator=generator)
        # inpainting: by default only the pixels to fill count (mask: 1 = known)
        loss_mask = None
        if cond is not None and cond.mask is not None and self.inpaint_loss == "masked":
            loss_mask = 1 - cond.mask
        if self.diffusion.self_condition:
            base = cond or Cond()

            def model(x: Tensor, tt: Tensor, estimate: Tensor | None) -> Tensor:
                return net(x, tt, replace(base, self_cond=estimate))
        else:
            model = bind(net, cond)
        losses, t = self.diffusion.training_losses(
            model, x0, loss_mask=loss_mask, generator=generator
        )
        loss = losses.mean()
        # epoch-level val metrics agree across DDP ranks (checkpointing monitors val/loss)
        sync = stage == "val"
        self.log(
            f"{stage}/loss",
            loss,
            prog_bar=True,
            on_step=stage == "train",
            on_epoch=True,
            batch_size=len(x0),
            sync_dist=sync,
        )
        # loss per timestep (EDM: sigma) bucket: no host sync here, logged once per epoch
        self.bucket_loss[f"{stage}_buckets"].update(losses.detach(), t)
        return loss

    def _log_buckets(self, stage: str) -> None:
        metric = self.bucket_loss[f"{stage}_buckets"]
        if not metric.update_called:
            return
        means = metric.compute()  # summed over DDP ranks by torchmetrics
        metric.reset()
        # sync_dist: the values already agree across ranks; it keeps Lightning's DDP check quiet
        self.log_dict(
            {f"{stage}/{name}": m for name, m in zip(self.bucket_names, means)},
            sync_dist=True,
        )

    def on_train_epoch_end(self) -> None:
        self._log_buckets("train")

    def on_validation_start(self) -> None:
        self.stop_if_nonfinite()  # no grids or metrics from weights a nan loss has reached

    def on_validation_epoch_end(self) -> None:
        self._log_buckets("val")

    def step_generator(self, batch_idx: int) -> torch.Generator:
        """The randomness of one training batch on one process (timesteps, noise, label
        dropout), from (seed, step, batch, rank): every DDP rank draws its own, and a resumed
        run draws what the uninterrupted one would have, whatever the global RNG state."""
        seed = int((self.config or {}).get("seed") or 0)
        key = [seed, self.global_step, batch_idx, self.global_rank]
        state = int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0])
        return torch.Generator(device=self.device).manual_seed(state & (2**63 - 1))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train", self.net, generator=self.step_generator(batch_idx))
        self._note_if_nonfinite(loss.detach())
        if self.global_step % self.finite_check_every == 0:
            self.stop_if_nonfinite()
        return loss

    # the loss is checked every step on a CPU (free there), every 16 on an accelerator, where
    # reading it back is a host synchronisation; validation and checkpoints check first
    @property
    def finite_check_every(self) -> int:
        return 1 if self.device.type == "cpu" else 16

    def _note_if_nonfinite(self, loss: Tensor) -> None:
        """Remember the first non-finite loss and its step, on the device (no host read)."""
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((2,), -1.0, device=loss.device)  # (step, loss)
        new = ~torch.isfinite(loss) & (self._first_bad[0] < 0)
        here = torch.stack(
            [torch.full_like(loss, self.global_step, dtype=torch.float32), loss.float()]
        )
        self._first_bad = torch.where(new, here, self._first_bad)

    def stop_if_nonfinite(self) -> None:
        """Stop every DDP rank together (not only the one that saw it) before a non-finite loss
        reaches a checkpoint; checkpoints on disk stay as they were."""
        first = self._first_bad
        if first is None:
            return
        ranks = (
            self.all_gather(first).reshape(-1, 2) if self.trainer.world_size > 1 else first[None]
        )
        seen = [(step, value) for step, value in ranks.tolist() if step >= 0]
        if not seen:
            return
        step, value = min(seen)  # the earliest on any rank
        what = f"{value}" if first[0].item() >= 0 else "nan on another process"
        raise UserError(
            f"training loss became {what} at step {int(step)} (epoch {self.current_epoch}); "
            "lower optimizer.lr, set trainer.gradient_clip_val, or use trainer.precision=32"
        )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The EMA follows optimizer steps, not batches: with trainer.accumulate_grad_batches
        it moves once per accumulated step."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # a fixed generator per batch makes validation loss comparable between epochs
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        self._step(batch, "val", self.sampling_net, generator=g)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.net.parameters())
        warmup = self.lr_warmup_steps
        factory = self.lr_scheduler_factory
        if factory is None and not warmup:
            return optimizer
        if isinstance(factory, functools.partial) and factory.keywords.get("T_max", 0) is None:
            # a cosine decay over the rest of the run, however its length was given
            total = int(self.trainer.estimated_stepping_batches)
            factory = functools.partial(factory, T_max=max(1, total - warmup))
        scheduler = factory(optimizer=optimizer) if factory is not None else None
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            require(
                not warmup,
                "lr_warmup_steps with lr_scheduler=plateau: the plateau schedule cannot follow a "
                "warmup; use lr_scheduler=cosine or none with the warmup",
            )
            # it watches a metric logged at validation; strict=False skips validations that
            # lack it (eval/fid every N epochs)
            step_when = {"monitor": self.lr_monitor, "interval": "epoch", "strict": False}
        else:  # schedules in optimizer steps
            step_when = {"interval": "step"}
            if warmup:  # linear from 1/1000 of the rate, then the schedule (or a constant rate)
                ramp = torch.optim.lr_scheduler.LinearLR(optimizer, 1e-3, total_iters=warmup)
                after = scheduler or torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0, 0)
                scheduler = torch.optim.lr_scheduler.SequentialLR(
                    optimizer, [ramp, after], milestones=[warmup]
                )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **step_when}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.training:
            self.stop_if_nonfinite()  # never a checkpoint of weights a nan loss has reached
        checkpoint["diffusion_lab_config"] = self.config
        # RNG states (noise, timesteps, label dropout): a resumed run draws what the
        # uninterrupted one would have drawn
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # plain types: Lightning reloads checkpoints with weights_only=True
            "numpy": [
                v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()
            ],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        if (
            states["cuda"]
            and torch.cuda.is_available()
            and len(states["cuda"]) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(states["cuda"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate(states["python"])

    # ---- sampling ----------------------------------------------------------------------------
    @property
    def sampling_net(self) -> nn.Module:
        """The EMA weights when EMA is on (used for validation and sampling)."""
        return self.ema.module if self.ema is not None else self.net

    def check_cond(
        self, labels: Tensor | None, attrs: Tensor | None, guidance_scale: float
    ) -> None:
        check_conditioning(self.sampling_net, labels, attrs, guidance_scale)

    def _sampling_autocast(self) -> contextlib.AbstractContextManager:
        """The network under the run's mixed precision (see sampling.sampling_autocast)."""
        precision = ((self.config or {}).get("trainer") or {}).get("precision", "32")
        return sampling_autocast(precision, self.device)

    def generate(
        self,
        n: int,
        labels: Tensor | None = None,
        attrs: Tensor | None = None,
        sampler: dict | None = None,
        guidance_scale: float | None = None,
        seed: int | None = 0,
        callback: StepCallback | None = None,
        known: Tensor | None = None,
        mask: Tensor | None = None,
        guide: Guide | None = None,
        batch_size: int | None = None,
    ) -> Tensor:
        """n images in [-1, 1] from the EMA network with the configured sampler, `sampler`
        overriding its settings (a different `name` starts from that sampler's defaults).
        See diffusion_lab.sampling.generate for the arguments."""
        w = self.guidance_scale if guidance_scale is None else guidance_scale
        conditional = self.num_classes > 0 or len(self.attribute_sizes) > 0
        if w != 1.0 and conditional and self.p_uncond == 0:
            # the null token's embedding never trained: the "unconditional" branch is noise
            raise UserError(
                f"guidance_scale={w}: this model was trained without label dropout "
                "(conditioning.p_uncond=0), so it has no unconditional branch to guide with; "
                "use guidance_scale=1, or train with conditioning=class_cfg"
            )
        return generate_samples(
            self.sampling_net,
            self.diffusion,
            n,
            labels=labels,
            attrs=attrs,
            sampler=sampler_options(self.sampler, sampler),
            guidance_scale=w,
            seed=seed,
            callback=callback,
            known=known,
            mask=mask,
            guide=guide,
            batch_size=batch_size,
            autocast=self._sampling_autocast,
            channels_last=self.channels_last,
        )
