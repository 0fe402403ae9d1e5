"""Training throughput of the course U-Nets: through the framework vs a plain PyTorch loop.

    python scripts/benchmark_train.py [--steps 20] [--rounds 3] [--batch 128]

Both paths train the same model (channels_last, as the framework's default) on the same
in-memory data (real MNIST from ../shared/datasets when present, else random 28x28 images),
batch 128. Rounds are interleaved and the median is reported, since absolute CPU figures drift
between windows (see ../shared/perf-baseline.md).
"""

import argparse
import gzip
import statistics
from pathlib import Path

import torch

from diffusion_lab.benchmarking import course_unet, framework_train_rate, plain_train_rate

MNIST = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "datasets"
    / "MNIST"
    / "raw"
    / "t10k-images-idx3-ubyte.gz"
)


def load_images(n: int) -> torch.Tensor:
    if MNIST.exists():
        data = gzip.open(MNIST).read()[16:]
        return (
            torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(-1, 1, 28, 28)[:n].clone()
        )
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--archs", default="efficient,basic")
    args = p.parse_args()
    images = load_images(4096)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, 28x28x1, "
          f"{args.steps} steps x {args.rounds} interleaved rounds (median)\n")  # fmt: skip
    print(
        "| U-Net | plain loop img/s | framework img/s (EMA on) | ratio | framework, EMA off | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for arch in args.archs.split(","):
        plain, fw, fw_noema = [], [], []
        for _ in range(args.rounds):
            torch.manual_seed(0)
            plain.append(plain_train_rate(course_unet(arch, 1, 28), images, args.batch, args.steps))
            torch.manual_seed(0)
            fw.append(
                framework_train_rate(course_unet(arch, 1, 28), images, args.batch, args.steps)
            )
            torch.manual_seed(0)
            fw_noema.append(
                framework_train_rate(
                    course_unet(arch, 1, 28), images, args.batch, args.steps, ema=False
                )
            )
        a, b, c = (statistics.median(v) for v in (plain, fw, fw_noema))
        print(f"| {arch} | {a:.1f} | {b:.1f} | {b / a:.3f} | {c:.1f} | {c / a:.3f} |", flush=True)


if __name__ == "__main__":
    main()
