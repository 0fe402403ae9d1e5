"""Measurement helpers shared by scripts/benchmark*.py: training and sampling throughput through a
plain PyTorch loop and through the framework, FLOP counts and the machine's fp32 peak.

Rates are images (or image*steps) per second over a timed window after warm-up steps; callers
interleave rounds and take medians because absolute CPU figures drift between windows. Each
measurement builds its network from `make_net` so that every window starts from the same state.
"""

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from diffusion_lab.data.loader import TensorBatches, to_model_range
from diffusion_lab.diffusion import GaussianDiffusion, ddim_sample, linear_betas
from diffusion_lab.host_memory import keep_freed_memory
from diffusion_lab.models import SimpleUNet
from diffusion_lab.training.module import DiffusionModule

CONF = Path(__file__).resolve().parents[1] / "conf"
# the basic / efficient U-Net pair exactly as conf/model/{basic,efficient}_unet.yaml build them
UNET_CONFIGS = {
    arch: {
        k: v
        for k, v in yaml.safe_load((CONF / "model" / f"{arch}_unet.yaml").read_text()).items()
        if k != "_target_"
    }
    for arch in ("basic", "efficient")
}


def our_unet(arch: str, channels: int, size: int) -> nn.Module:
    return SimpleUNet(channels, size, **UNET_CONFIGS[arch])


class PeerWrapper(nn.Module):
    """Adapts a peer U-Net to forward(x_t, t)."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return self.net(x, t).sample if self.kind == "diffusers" else self.net(x, t)


# peers sized to the efficient U-Net's ~0.68M parameters, with two down-samplings like it
PEERS = {
    "diffusers": "diffusers UNet2DModel (14,28,56)",
    "lucidrains": "denoising-diffusion-pytorch Unet(16, (1,2,4))",
}


def peer_unet(kind: str, channels: int, size: int) -> nn.Module:
    if kind == "diffusers":
        from diffusers import UNet2DModel

        return PeerWrapper(
            UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                        block_out_channels=(14, 28, 56), layers_per_block=2, norm_num_groups=7,
                        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3),
            kind,
        )  # fmt: skip
    from denoising_diffusion_pytorch import Unet

    return PeerWrapper(Unet(dim=16, dim_mults=(1, 2, 4), channels=channels), kind)


def installed_peers() -> list[str]:
    """The PEERS whose package is installed (pip install -e ".[peers]")."""
    modules = {"diffusers": "diffusers", "lucidrains": "denoising_diffusion_pytorch"}
    return [k for k in PEERS if importlib.util.find_spec(modules[k]) is not None]


def build_unet(kind: str, channels: int, size: int) -> nn.Module:
    """ "efficient" / "basic" (the basic / efficient U-Net pair) or a PEERS key."""
    return (
        our_unet(kind, channels, size) if kind in UNET_CONFIGS else peer_unet(kind, channels, size)
    )


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _step_memory(kind: str, channels: int, size: int, batch: int) -> float | None:
    keep_freed_memory()  # as the entry points and the benchmark run
    images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
    except OSError:
        return None
    before = _status_mib("VmRSS")
    plain_train_rate(lambda: build_unet(kind, channels, size), images, batch, seconds=0)
    peak = _status_mib("VmHWM")
    return None if before is None or peak is None else peak - before


def train_step_mib(kind: str, channels: int, size: int, batch: int) -> float | None:
    """Memory two training steps add to a fresh Python process (weights, activations, gradients,
    Adam state): its peak resident memory above what it held before building the model. A
    fresh process, because one that has trained before keeps freed memory resident and would
    show the step as free. None where /proc does not say (not Linux)."""
    code = (
        "import json; from benchmarking import _step_memory; "
        f"print(json.dumps(_step_memory({kind!r}, {channels}, {size}, {batch})))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # finds this module
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env
    )
    return json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _best_gflops(op: Callable[[], object], flops: float, windows: int, seconds: float) -> float:
    """The best of several timing windows (a peak, so the maximum, not the median, of windows
    disturbed by other work)."""
    op()
    best = 0.0
    for _ in range(windows):
        count, t0 = 0, time.perf_counter()
        while count == 0 or time.perf_counter() - t0 < seconds:  # at least one op per window
            op()
            count += 1
        best = max(best, flops * count / (time.perf_counter() - t0) / 1e9)
    return best


def matmul_gflops(
    n: int = 2048, windows: int = 5, seconds: float = 0.5, dtype: torch.dtype = torch.float32
) -> float:
    """Matmul throughput of this machine (fp32: MKL in the PyPI wheels; bf16: oneDNN, AMX)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return _best_gflops(lambda: a @ b, 2 * n**3, windows, seconds)


def conv_gflops(ch: int = 256, size: int = 32, batch: int = 16, windows: int = 5) -> float:
    """fp32 throughput of a large channels_last 3x3 convolution (oneDNN). On AMD CPUs MKL's
    matmul runs well below what oneDNN's convolutions reach, so a matmul alone understates
    the peak a U-Net can be measured against."""
    x = torch.randn(batch, ch, size, size).contiguous(memory_format=torch.channels_last)
    w = torch.randn(ch, ch, 3, 3).contiguous(memory_format=torch.channels_last)
    flops = 2 * batch * size * size * ch * ch * 9
    return _best_gflops(lambda: F.conv2d(x, w, padding=1), flops, windows, 0.5)


def _autocast(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()


def plain_train_rate(
    make_net: Callable[[], nn.Module],
    images: torch.Tensor,
    batch: int,
    seconds: float = 2.5,
    channels_last: bool = True,
    warmup: int = 1,
    adam: dict | None = None,
    autocast: torch.dtype | None = None,
) -> float:
    """A hand-written loop: slice a batch from memory, DDPM eps loss, backward, Adam; timed
    over whole steps for about `seconds` after `warmup` steps."""
    diffusion = GaussianDiffusion(linear_betas(1000))
    net = make_net()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    def forward(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with _autocast(autocast):
            return net(xt, t).float()

    opt = torch.optim.Adam(net.parameters(), lr=1e-4, **(adam or {}))
    g = torch.Generator().manual_seed(0)
    step, t0 = 0, 0.0
    while step <= warmup or time.perf_counter() - t0 < seconds:
        if step == warmup:
            t0 = time.perf_counter()
        x = to_model_range(images[torch.randint(0, len(images), (batch,), generator=g)])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        losses, _ = diffusion.training_losses(forward, x)
        opt.zero_grad(set_to_none=True)
        losses.mean().backward()
        opt.step()
        step += 1
    return (step - warmup) * batch / (time.perf_counter() - t0)


class _WallClockWindow(pl.Callback):
    """Wall-clock images/s from the end of the warm-up batches to the end of the last batch
    (everything the Trainer does between batches counts); stops the run after `seconds`."""

    def __init__(self, warmup: int, seconds: float) -> None:
        self.warmup, self.seconds = warmup, seconds
        self.images, self.t0, self.elapsed = 0, 0.0, 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if trainer.global_step == self.warmup:
            self.t0 = now
        elif trainer.global_step > self.warmup:
            self.images += len(batch["image"])
            self.elapsed = now - self.t0
            trainer.should_stop = self.elapsed >= self.seconds


def framework_train_rate(
    make_net: Callable[[], nn.Module],
    images: torch.Tensor,
    batch: int,
    seconds: float = 2.5,
    channels_last: bool = True,
    warmup: int = 1,
    precision: str = "32",
) -> float:
    """The same work through DiffusionModule + Trainer + in-memory batches (+ EMA, bucket logging)."""
    module = DiffusionModule(
        net=make_net(),
        diffusion=GaussianDiffusion(linear_betas(1000), objective="eps"),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-4),
        ema_decay=0.999,
        channels_last=channels_last,
    )
    data = {"image": images, "label": torch.zeros(len(images), dtype=torch.long)}
    window = _WallClockWindow(warmup, seconds)
    trainer = pl.Trainer(
        accelerator="cpu",
        precision=precision,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[window],
    )
    trainer.fit(module, train_dataloaders=TensorBatches(data, batch, shuffle=True, drop_last=True))
    return window.images / window.elapsed


def sampling_rate(
    make_net: Callable[[], nn.Module],
    shape: tuple[int, ...],
    batch: int = 256,
    steps: int = 5,
    channels_last: bool = True,
    inference: bool = True,
    autocast: torch.dtype | None = None,
) -> float:
    """Image*steps per second of DDIM steps (under inference mode, or no_grad)."""
    net = make_net().eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    diffusion = GaussianDiffusion(linear_betas(1000))

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with _autocast(autocast):
            out = net(x.contiguous(memory_format=torch.channels_last) if channels_last else x, t)
        return out.float()

    with torch.inference_mode() if inference else torch.no_grad():
        ddim_sample(diffusion, denoise, (batch, *shape), steps=1)  # warm-up
        t0 = time.perf_counter()
        ddim_sample(diffusion, denoise, (batch, *shape), steps=steps)
    return batch * steps / (time.perf_counter() - t0)
