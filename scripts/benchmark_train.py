"""Training throughput of the course U-Nets: through the framework vs a plain PyTorch loop.

    python scripts/benchmark_train.py [--steps 30] [--rounds 3] [--batch 128]

Both paths train the same model (same config: channels_last, EMA off/on as the framework's
default) on the same in-memory data (real MNIST from ../shared/datasets when present, else
random 28x28 images), batch 128. Rounds are interleaved and the median is reported, since
absolute CPU figures drift between windows (see ../shared/perf-baseline.md).
"""

import argparse
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from diffusion_lab.data.loader import TensorBatches, to_model_range
from diffusion_lab.diffusion import GaussianDiffusion, linear_betas
from diffusion_lab.models import CourseUNet
from diffusion_lab.training.callbacks import Throughput
from diffusion_lab.training.module import DiffusionModule

ARCHS = {
    "basic": dict(channels=(64, 128, 256), time_dim=64, middle_conv=False),
    "efficient": dict(channels=(24, 48, 96), time_dim=192, middle_conv=True),
}


def load_images(n: int) -> torch.Tensor:
    raw = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "MNIST" / "raw"
    f = raw / "t10k-images-idx3-ubyte.gz"
    if f.exists():
        import gzip

        data = gzip.open(f).read()[16:]
        images = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(-1, 1, 28, 28)
        return images[:n].clone()
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)


def plain_loop(
    arch: str, images: torch.Tensor, batch: int, steps: int, channels_last: bool
) -> float:
    torch.manual_seed(0)
    net = CourseUNet(1, 28, **ARCHS[arch])
    diffusion = GaussianDiffusion(linear_betas(1000))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    warmup, t0 = 3, 0.0
    for i in range(steps + warmup):
        if i == warmup:
            t0 = time.perf_counter()
        idx = torch.randint(0, len(images), (batch,), generator=g)
        x = to_model_range(images[idx])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        losses, _ = diffusion.training_losses(lambda xt, t: net(xt, t), x)
        loss = losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def framework(
    arch: str, images: torch.Tensor, batch: int, steps: int, channels_last: bool, ema: bool
) -> float:
    torch.manual_seed(0)
    module = DiffusionModule(
        net=CourseUNet(1, 28, **ARCHS[arch]),
        diffusion=GaussianDiffusion(linear_betas(1000)),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
        ema_decay=0.999 if ema else None,
        channels_last=channels_last,
    )
    data = {"image": images, "label": torch.zeros(len(images), dtype=torch.long)}
    loader = TensorBatches(data, batch, shuffle=True, drop_last=True)
    throughput = Throughput(warmup_batches=3)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps + 3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[throughput],
        log_every_n_steps=50,
    )
    trainer.fit(module, train_dataloaders=loader)
    return throughput.images_per_sec


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--archs", default="efficient,basic")
    p.add_argument("--no-channels-last", action="store_true")
    args = p.parse_args()
    cl = not args.no_channels_last
    images = load_images(max(args.batch * 8, 2048))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, 28x28x1, "
        f"channels_last={cl}, {args.steps} steps x {args.rounds} interleaved rounds (median)\n"
    )
    print(
        "| U-Net | plain loop img/s | framework img/s (EMA on) | ratio | framework, EMA off | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for arch in args.archs.split(","):
        plain, fw, fw_noema = [], [], []
        for _ in range(args.rounds):
            plain.append(plain_loop(arch, images, args.batch, args.steps, cl))
            fw.append(framework(arch, images, args.batch, args.steps, cl, ema=True))
            fw_noema.append(framework(arch, images, args.batch, args.steps, cl, ema=False))
        a, b, c = (statistics.median(v) for v in (plain, fw, fw_noema))
        print(f"| {arch} | {a:.1f} | {b:.1f} | {b / a:.3f} | {c:.1f} | {c / a:.3f} |", flush=True)


if __name__ == "__main__":
    main()
