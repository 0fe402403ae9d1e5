"""The performance suite: framework vs plain loop vs peers, FLOP efficiency, sampling, data rates.

    python scripts/benchmark.py [--rounds 3] [--json outputs/benchmark.json] [--compile]

For each course U-Net and dataset shape (28x28x1 MNIST-like, 32x32x3 patterns): training
images/s through the framework and a plain loop (batch 128), forward MFLOPs per image
(torch.utils.flop_counter), the achieved fraction of this machine's fp32 matmul FLOP/s
(a training step counted as 3x the forward), DDIM sampling image*steps/s at batch 256, and
peak resident memory. Optional peers (diffusers UNet2DModel, denoising-diffusion-pytorch Unet)
at matched parameter counts are measured in the same run when installed. Then the data
pipeline rates and the speed options (channels_last, Adam foreach/fused, sampling batch,
torch.compile with --compile). Windows are interleaved; medians are reported.
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from diffusion_lab.benchmarking import (
    course_unet,
    framework_train_rate,
    matmul_gflops,
    n_params,
    plain_train_rate,
    sampling_rate,
)
from diffusion_lab.data.loader import TensorBatches
from diffusion_lab.data.patterns import generate_patterns
from diffusion_lab.training.measure import forward_mflops

SHAPES = {"28x28x1": (1, 28), "32x32x3": (3, 32)}


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM
    except OSError:
        pass


def peak_rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def images_for(shape: tuple[int, int], n: int = 2048) -> torch.Tensor:
    c, s = shape
    if c == 3:
        return generate_patterns(n, s, seed=0)[0]
    return torch.randint(0, 256, (n, 1, s, s), dtype=torch.uint8)


class PeerWrapper(nn.Module):
    """Adapts a peer U-Net to forward(x_t, t)."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return self.net(x, t).sample if self.kind == "diffusers" else self.net(x, t)


def peers(channels: int, size: int) -> dict[str, Callable[[], nn.Module]]:
    out = {}
    try:
        from diffusers import UNet2DModel

        out["diffusers UNet2DModel (14,28,56)"] = lambda: PeerWrapper(
            UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                        block_out_channels=(14, 28, 56), layers_per_block=2, norm_num_groups=7,
                        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3),
            "diffusers",
        )  # fmt: skip
    except ImportError:
        pass
    if size % 8:  # its three down-samplings need a multiple of 8 (so 32x32 only)
        return out
    try:
        from denoising_diffusion_pytorch import Unet

        out["denoising-diffusion-pytorch Unet dim=16"] = PeerWrapper(
            Unet(dim=16, channels=channels), "ddpm"
        )
    except ImportError:
        pass
    return out


def measure_model(name, make, images, shape_name, shape, args, peak) -> dict:
    # ~2-6 s windows: fewer steps for the big course U-Net and for the (slower) peers
    steps = 5 if n_params(make()) > 2_000_000 else 15 if name.startswith("course") else 6
    reset_peak_rss()
    fns = {"plain": lambda: plain_train_rate(make(), images, args.batch, steps)}
    if name.startswith("course"):
        fns["framework"] = lambda: framework_train_rate(make(), images, args.batch, steps)
    rates = median_rounds(fns, args.rounds)
    mflops = forward_mflops(make(), shape)
    best = rates.get("framework", rates["plain"])
    frac = 3 * mflops * 1e6 * best / (peak * 1e9)
    sample = sampling_rate(make(), shape, batch=256, steps=3)
    row = {
        "model": name, "shape": shape_name, "params": n_params(make()), "mflops": mflops,
        "plain": rates["plain"], "framework": rates.get("framework"), "peak_fraction": frac,
        "sample_img_steps_per_s": sample, "peak_rss_mib": peak_rss_mib(),
    }  # fmt: skip
    fw = f"{row['framework']:.1f}" if row["framework"] else "-"
    ratio = f"{row['framework'] / row['plain']:.3f}" if row["framework"] else "-"
    print(f"| {name} | {shape_name} | {row['params']:,} | {mflops:.0f} | {row['plain']:.1f} | {fw} | {ratio} "
          f"| {100 * frac:.0f}% | {sample:.0f} | {row['peak_rss_mib'] or 0:.0f} |", flush=True)  # fmt: skip
    return row


def median_rounds(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    results: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():  # interleaved: every option sees the same drift
            torch.manual_seed(0)
            results[name].append(fn())
    return {k: statistics.median(v) for k, v in results.items()}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--json", default="outputs/benchmark.json")
    p.add_argument(
        "--compile", action="store_true", help="also measure torch.compile (~40 s of compiling)"
    )
    args = p.parse_args()
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    peak = matmul_gflops()
    report["matmul_gflops"] = peak
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul 2048^2: {peak:.0f} GFLOP/s\n"
    )

    rows = []
    print(
        "| model | shape | params | fwd MFLOP/img | plain img/s | framework img/s | ratio | % of matmul peak | sample img*step/s | peak RSS MiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape_name in args.shapes.split(","):
        c, s = SHAPES[shape_name]
        images = images_for((c, s))
        nets = {f"course {a}": partial(course_unet, a, c, s) for a in ("efficient", "basic")}
        nets.update(peers(c, s))
        for name, make in nets.items():
            rows.append(measure_model(name, make, images, shape_name, (c, s, s), args, peak))
    report["models"] = rows

    # data pipelines vs the fastest training rate
    t0 = time.perf_counter()
    generate_patterns(20_000, 32, seed=1)
    gen_rate = 20_000 / (time.perf_counter() - t0)
    mnist_like = {"image": torch.randint(0, 256, (60_000, 1, 28, 28), dtype=torch.uint8),
                  "label": torch.zeros(60_000, dtype=torch.long)}  # fmt: skip
    t0 = time.perf_counter()
    n = sum(len(b["image"]) for b in TensorBatches(mnist_like, args.batch, shuffle=True))
    batch_rate = n / (time.perf_counter() - t0)
    train_max = max(r["framework"] or r["plain"] for r in rows if r["model"].startswith("course"))
    report["data"] = {"pattern_generation_img_s": gen_rate, "in_memory_batches_img_s": batch_rate}
    print("\n| data pipeline | images/s | x fastest training rate |")
    print("|---|---:|---:|")
    print(f"| pattern generator (32x32x3) | {gen_rate:,.0f} | {gen_rate / train_max:.0f}x |")
    print(
        f"| in-memory batches (28x28x1, batch {args.batch}) | {batch_rate:,.0f} | {batch_rate / train_max:.0f}x |"
    )

    # speed options on the efficient U-Net, 28x28x1
    images = images_for((1, 28))
    eff = lambda: course_unet("efficient", 1, 28)  # noqa: E731
    options = {
        "eager fp32, channels_last (default)": lambda: plain_train_rate(
            eff(), images, args.batch, 15
        ),
        "contiguous (channels_last off)": lambda: plain_train_rate(
            eff(), images, args.batch, 15, channels_last=False
        ),
        "Adam foreach=False": lambda: plain_train_rate(
            eff(), images, args.batch, 15, adam={"foreach": False}
        ),
        "Adam fused=True": lambda: plain_train_rate(
            eff(), images, args.batch, 15, adam={"fused": True}
        ),
    }
    if args.compile:
        compiled = eff()
        compiled.compile()
        t0 = time.perf_counter()
        plain_train_rate(compiled, images, args.batch, 1, warmup=1)
        report["compile_first_call_s"] = time.perf_counter() - t0
        options["torch.compile"] = lambda: plain_train_rate(compiled, images, args.batch, 15)
    opt_rates = median_rounds(options, args.rounds)
    base = opt_rates["eager fp32, channels_last (default)"]
    print("\n| training option (efficient, 28x28x1) | img/s | vs default |")
    print("|---|---:|---:|")
    for k, v in opt_rates.items():
        print(f"| {k} | {v:.1f} | {v / base:.2f}x |")
    sample_opts = median_rounds(
        {
            "batch 256, channels_last (default)": lambda: sampling_rate(eff(), (1, 28, 28), 256),
            "batch 64": lambda: sampling_rate(eff(), (1, 28, 28), 64),
            "batch 256, contiguous": lambda: sampling_rate(
                eff(), (1, 28, 28), 256, channels_last=False
            ),
        },
        args.rounds,
    )
    base = sample_opts["batch 256, channels_last (default)"]
    print(
        "\n| sampling option (efficient, 28x28x1) | img*steps/s | vs default | s per 1,000 images: DDPM-1000 / DDIM-50 / 20 / 10 |"
    )
    print("|---|---:|---:|---|")
    for k, v in sample_opts.items():
        per = " / ".join(f"{1000 * n / v:.0f}" for n in (1000, 50, 20, 10))
        print(f"| {k} | {v:.0f} | {v / base:.2f}x | {per} |")
    report["options"] = {"train": opt_rates, "sample": sample_opts}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
