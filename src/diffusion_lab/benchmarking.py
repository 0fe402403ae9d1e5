"""Measurement helpers shared by scripts/benchmark*.py: training and sampling throughput through a
plain PyTorch loop and through the framework, FLOP counts and the machine's matmul peak.

Rates are images (or image*steps) per second over a timed window after warm-up steps; callers
interleave rounds and take medians because absolute CPU figures drift between windows.
"""

import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn

from diffusion_lab.data.loader import TensorBatches, to_model_range
from diffusion_lab.diffusion import GaussianDiffusion, ddim_sample, linear_betas
from diffusion_lab.models import CourseUNet
from diffusion_lab.training.callbacks import Throughput
from diffusion_lab.training.module import DiffusionModule

COURSE_UNETS = {
    "basic": dict(channels=(64, 128, 256), time_dim=64, middle_conv=False),
    "efficient": dict(channels=(24, 48, 96), time_dim=192, middle_conv=True),
}


def course_unet(arch: str, channels: int, size: int) -> nn.Module:
    return CourseUNet(channels, size, **COURSE_UNETS[arch])


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def matmul_gflops(n: int = 2048, windows: int = 5, seconds: float = 0.5) -> float:
    """fp32 matmul throughput of this machine, the best of several windows: the denominator of
    '% of peak' (a peak, so the maximum, not the median, of windows disturbed by other work)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(windows):
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - t0) / 1e9)
    return best


def plain_train_rate(
    net: nn.Module,
    images: torch.Tensor,
    batch: int,
    steps: int,
    channels_last: bool = True,
    warmup: int = 3,
    adam: dict | None = None,
    forward: Callable | None = None,
) -> float:
    """A hand-written loop: slice a batch from memory, DDPM eps loss, backward, Adam."""
    diffusion = GaussianDiffusion(linear_betas(1000))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    forward = forward or (lambda xt, t: net(xt, t))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, **(adam or {}))
    g = torch.Generator().manual_seed(0)
    t0 = 0.0
    for i in range(steps + warmup):
        if i == warmup:
            t0 = time.perf_counter()
        x = to_model_range(images[torch.randint(0, len(images), (batch,), generator=g)])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        losses, _ = diffusion.training_losses(forward, x)
        opt.zero_grad(set_to_none=True)
        losses.mean().backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def framework_train_rate(
    net: nn.Module,
    images: torch.Tensor,
    batch: int,
    steps: int,
    channels_last: bool = True,
    ema: bool = True,
) -> float:
    """The same work through DiffusionModule + Trainer + in-memory batches (+ EMA, bucket logging)."""
    module = DiffusionModule(
        net=net,
        diffusion=GaussianDiffusion(linear_betas(1000), objective="eps"),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-4),
        ema_decay=0.999 if ema else None,
        channels_last=channels_last,
    )
    data = {"image": images, "label": torch.zeros(len(images), dtype=torch.long)}
    throughput = Throughput(warmup_batches=3)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps + 3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[throughput],
    )
    trainer.fit(module, train_dataloaders=TensorBatches(data, batch, shuffle=True, drop_last=True))
    return throughput.images_per_sec


@torch.inference_mode()
def sampling_rate(
    net: nn.Module,
    shape: tuple[int, ...],
    batch: int = 256,
    steps: int = 5,
    channels_last: bool = True,
) -> float:
    """Image*steps per second of DDIM steps under inference mode."""
    net = net.eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    diffusion = GaussianDiffusion(linear_betas(1000))

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(x.contiguous(memory_format=torch.channels_last) if channels_last else x, t)

    ddim_sample(diffusion, denoise, (batch, *shape), steps=1)  # warm-up
    t0 = time.perf_counter()
    ddim_sample(diffusion, denoise, (batch, *shape), steps=steps)
    return batch * steps / (time.perf_counter() - t0)
