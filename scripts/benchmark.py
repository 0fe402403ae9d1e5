"""The performance suite: framework vs plain loop vs peers, FLOP efficiency, sampling, data rates.

    python scripts/benchmark.py [--rounds 3] [--shapes 28x28x1,32x32x3] [--compile] [--json PATH]

For each U-Net and dataset shape (28x28x1 MNIST, 32x32x3 patterns): training images/s through
the framework (DiffusionModule + Trainer + EMA + bucket logging + in-memory batches) and
through a plain PyTorch loop (batch 128), forward MFLOPs per image (torch.utils.flop_counter),
the achieved fraction of this machine's fp32 matmul rate (a 2048^2 matmul timed in the same
rounds as the models; a training step counted as 3x the forward) and of its best fp32 rate (the
best window of that matmul or of a large 3x3 convolution), DDIM sampling image*steps/s at batch
256 and the memory a training step adds to the process (peak resident memory above the
baseline). The optional peers (pip install -e ".[peers]": diffusers UNet2DModel,
denoising-diffusion-pytorch Unet) are built at the efficient U-Net's parameter count and
measured in the same rounds: every round times every model once, so all of them see the same
drift, and the median of the rounds is reported. Then the data pipeline rates, the speed
options (channels_last, Adam foreach/fused, bf16 autocast, sampling batch, inference mode,
torch.compile with --compile) and the sampling cost per 1,000 images. Where the CPU has AMX
bf16 units (and the trainer defaults to bf16-mixed), the basic / efficient U-Nets are also timed in bf16,
plain loop against framework, with a bf16 matmul in the same rounds. Like the entry points,
the whole run keeps freed memory in the heap (diffusion_lab.host_memory).
"""

import argparse
import gzip
import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from benchmarking import (
    PEERS,
    UNET_CONFIGS,
    build_unet,
    conv_gflops,
    framework_train_rate,
    installed_peers,
    matmul_gflops,
    n_params,
    our_unet,
    plain_train_rate,
    sampling_rate,
    train_step_mib,
)

from diffusion_lab.data.loader import TensorBatches
from diffusion_lab.data.patterns import generate_patterns
from diffusion_lab.hardware import cpu_has_fast_bf16
from diffusion_lab.host_memory import keep_freed_memory
from diffusion_lab.training.measure import forward_mflops

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"28x28x1": (1, 28), "32x32x3": (3, 32)}
MNIST = ROOT.parent / "shared" / "datasets" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"


def images_for(shape: tuple[int, int], n: int = 2048) -> torch.Tensor:
    """Real data for the shape: patterns for 32x32x3, MNIST (when ../shared has it) for 28x28x1."""
    c, s = shape
    if c == 3:
        return generate_patterns(n, s, seed=0)[0]
    if MNIST.exists():
        raw = gzip.open(MNIST).read()[16:]
        return (
            torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(-1, 1, 28, 28)[:n].clone()
        )
    return torch.randint(0, 256, (n, 1, s, s), dtype=torch.uint8)


def interleaved_rounds(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for r in range(rounds):
        # interleaved, and every other round in reverse (ABBA): a steady drift of the host
        # favours no option, neither across the rounds nor within the back-to-back pairs
        for name, fn in order if r % 2 == 0 else order[::-1]:
            torch.manual_seed(0)
            results[name].append(fn())
    return results


def median_rounds(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in interleaved_rounds(fns, rounds).items()}


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median of the per-round ratios: the two figures of a round were timed back to back, so
    they share one drift of the host."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def matmul_fraction(mflops: float, rates: list[float], matmul: list[float]) -> float:
    """Training GFLOP/s (3 x forward, MFLOPs x img/s / 1e3) over the same round's matmul."""
    return median_ratio([3 * mflops * r / 1e3 for r in rates], matmul)


def measure_shape(shape_name: str, args: argparse.Namespace, peak: float) -> list[dict]:
    c, s = SHAPES[shape_name]
    images = images_for((c, s))
    kinds = {f"{a} U-Net": a for a in UNET_CONFIGS}
    if not args.no_peers:
        kinds.update({PEERS[k]: k for k in installed_peers()})
    nets = {name: partial(build_unet, kind, c, s) for name, kind in kinds.items()}
    fns = {}
    for name, make in nets.items():
        fns[f"{name}|plain"] = partial(plain_train_rate, make, images, args.batch, args.seconds)
        if name.endswith(" U-Net"):
            fns[f"{name}|framework"] = partial(
                framework_train_rate, make, images, args.batch, args.seconds
            )
    # the matmul peak is timed in the same rounds, so each round's fraction sees one drift
    fns["matmul"] = partial(matmul_gflops, windows=1, seconds=args.seconds)
    rounds = interleaved_rounds(fns, args.rounds)
    rates = {k: statistics.median(v) for k, v in rounds.items()}
    rows = []
    for name, make in nets.items():
        mflops = forward_mflops(make(), (c, s, s))
        plain, fw = rates[f"{name}|plain"], rates.get(f"{name}|framework")
        ratio = median_ratio(rounds[f"{name}|framework"], rounds[f"{name}|plain"]) if fw else None
        measured = rounds[f"{name}|{'framework' if fw else 'plain'}"]
        fraction = matmul_fraction(mflops, measured, rounds["matmul"])
        rss = train_step_mib(kinds[name], c, s, args.batch)
        row = {
            "model": name, "shape": shape_name, "params": n_params(make()), "mflops": mflops,
            "plain": plain, "framework": fw, "framework_over_plain": ratio,
            "matmul_fraction": fraction, "matmul_gflops_median": rates["matmul"],
            "peak_fraction": 3 * mflops * 1e6 * (fw or plain) / (peak * 1e9),
            "sample_img_steps_per_s": sampling_rate(make, (c, s, s), args.sample_batch, steps=3),
            "train_step_mib": rss,
            # every round's figures, so a reader sees the host's scatter behind the medians
            "rounds": {
                "plain": rounds[f"{name}|plain"], "framework": rounds.get(f"{name}|framework"),
                "matmul_gflops": rounds["matmul"],
            },
        }  # fmt: skip
        rows.append(row)
        print(
            f"| {name} | {shape_name} | {row['params']:,} | {mflops:.0f} | {plain:.1f} | "
            + (f"{fw:.1f} | {ratio:.3f} | " if fw else "- | - | ")
            + f"{100 * fraction:.0f}% | {100 * row['peak_fraction']:.0f}% | "
            + f"{row['sample_img_steps_per_s']:.0f} | "
            + ("- |" if rss is None else f"{rss:.0f} |"),
            flush=True,
        )
    return rows


def measure_bf16(args: argparse.Namespace, fp32_rows: list[dict]) -> dict:
    """The basic / efficient U-Nets at 28x28x1 under bf16: a plain loop in bf16 autocast against the
    framework at trainer.precision=bf16-mixed (the CPU default where it is fast), with a bf16
    matmul in the same rounds."""
    report: dict = {"fast_bf16": cpu_has_fast_bf16()}
    if not report["fast_bf16"]:
        print("\nbf16: this CPU has no AMX bf16 units, so trainer.precision defaults to 32 here")
        return report
    images = images_for((1, 28))
    fns = {}
    for arch in UNET_CONFIGS:
        make = partial(our_unet, arch, 1, 28)
        fns[f"{arch}|plain"] = partial(
            plain_train_rate, make, images, args.batch, args.seconds, autocast=torch.bfloat16
        )
        fns[f"{arch}|framework"] = partial(
            framework_train_rate, make, images, args.batch, args.seconds, precision="bf16-mixed"
        )
    fns["matmul"] = partial(matmul_gflops, windows=1, seconds=args.seconds, dtype=torch.bfloat16)
    rounds = interleaved_rounds(fns, args.rounds)
    report["rounds"] = rounds
    fp32 = {r["model"]: r for r in fp32_rows if r["shape"] == "28x28x1"}
    print(
        f"\nbf16 (this CPU has AMX bf16 units: trainer.precision defaults to bf16-mixed); "
        f"bf16 matmul 2048^2 {statistics.median(rounds['matmul']):.0f} GFLOP/s\n"
    )
    print(
        "| model (28x28x1) | plain bf16 img/s | framework bf16-mixed img/s | framework / plain "
        "| framework vs fp32 | % of bf16 matmul |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for arch in UNET_CONFIGS:
        plain, fw = rounds[f"{arch}|plain"], rounds[f"{arch}|framework"]
        mflops = forward_mflops(our_unet(arch, 1, 28), (1, 28, 28))
        row = {
            "plain": statistics.median(plain),
            "framework": statistics.median(fw),
            "framework_over_plain": median_ratio(fw, plain),
            "matmul_fraction": matmul_fraction(mflops, fw, rounds["matmul"]),
        }
        fp32_fw = fp32.get(f"{arch} U-Net", {}).get("framework")
        row["over_fp32_framework"] = row["framework"] / fp32_fw if fp32_fw else None
        report[arch] = row
        print(
            f"| {arch} U-Net | {row['plain']:.1f} | {row['framework']:.1f} | "
            f"{row['framework_over_plain']:.3f} | "
            + (f"{row['over_fp32_framework']:.2f}x | " if fp32_fw else "- | ")
            + f"{100 * row['matmul_fraction']:.0f}% |"
        )
    return report


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=2.5, help="length of a timed window")
    p.add_argument("--sample-batch", type=int, default=256)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"any of {list(SHAPES)}")
    p.add_argument("--no-peers", action="store_true", help="skip the optional peer U-Nets")
    p.add_argument("--json", default=str(ROOT / "outputs" / "benchmark.json"))
    p.add_argument(
        "--compile", action="store_true", help="also measure torch.compile (~40 s of compiling)"
    )
    args = p.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # one Trainer per window
    warnings.filterwarnings("ignore")
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            p.error(f"--shapes: {shape!r} is not one of {list(SHAPES)}")
    started = time.perf_counter()
    report: dict = {
        "keep_freed_memory": keep_freed_memory(),  # as train/sample/evaluate run
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    report["matmul_gflops"], report["conv_gflops"] = matmul_gflops(), conv_gflops()
    peak = report["peak_gflops"] = max(report["matmul_gflops"], report["conv_gflops"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 GFLOP/s: matmul "
        f"2048^2 {report['matmul_gflops']:.0f}, conv 3x3 256ch {report['conv_gflops']:.0f}; "
        f"batch {args.batch}; median of {args.rounds} interleaved rounds\n"
    )
    print(
        "| model | shape | params | fwd MFLOP/img | plain img/s | framework img/s | ratio "
        "| % of matmul | % of fp32 peak | sample img*step/s | training step MiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [row for shape in args.shapes.split(",") for row in measure_shape(shape, args, peak)]
    report["models"] = rows
    report["bf16"] = measure_bf16(args, rows)

    # data pipelines vs the fastest training rate
    t0 = time.perf_counter()
    generate_patterns(20_000, 32, seed=1)
    gen_rate = 20_000 / (time.perf_counter() - t0)
    mnist_like = {"image": torch.randint(0, 256, (60_000, 1, 28, 28), dtype=torch.uint8),
                  "label": torch.zeros(60_000, dtype=torch.long)}  # fmt: skip
    t0 = time.perf_counter()
    n = sum(len(b["image"]) for b in TensorBatches(mnist_like, args.batch, shuffle=True))
    batch_rate = n / (time.perf_counter() - t0)
    train_max = max(
        [r["framework"] or r["plain"] for r in rows if r["model"].endswith(" U-Net")]
        + [report["bf16"][a]["framework"] for a in UNET_CONFIGS if a in report["bf16"]]
    )
    report["data"] = {"pattern_generation_img_s": gen_rate, "in_memory_batches_img_s": batch_rate}
    print("\n| data pipeline | images/s | x fastest training rate |")
    print("|---|---:|---:|")
    print(f"| pattern generator (32x32x3) | {gen_rate:,.0f} | {gen_rate / train_max:.0f}x |")
    print(
        f"| in-memory batches (28x28x1, batch {args.batch}) | {batch_rate:,.0f} | "
        f"{batch_rate / train_max:.0f}x |"
    )

    # speed options on the efficient U-Net, 28x28x1
    images = images_for((1, 28))
    eff = partial(our_unet, "efficient", 1, 28)
    train = partial(plain_train_rate, eff, images, args.batch, args.seconds)
    options = {
        "eager fp32, channels_last": train,
        "contiguous (channels_last off)": partial(train, channels_last=False),
        "Adam foreach=False": partial(train, adam={"foreach": False}),
        "Adam fused=True": partial(train, adam={"fused": True}),
        "bf16 autocast": partial(train, autocast=torch.bfloat16),
    }
    if args.compile:
        compiled = eff()
        compiled.compile()
        t0 = time.perf_counter()
        plain_train_rate(lambda: compiled, images, args.batch, seconds=0)
        report["compile_first_call_s"] = time.perf_counter() - t0
        options["torch.compile"] = partial(
            plain_train_rate, lambda: compiled, images, args.batch, args.seconds
        )
    opt_rates = median_rounds(options, args.rounds)
    base = opt_rates["eager fp32, channels_last"]
    print("\n| training option (efficient, 28x28x1) | img/s | vs eager fp32 |")
    print("|---|---:|---:|")
    for k, v in opt_rates.items():
        print(f"| {k} | {v:.1f} | {v / base:.2f}x |")

    sample = partial(sampling_rate, eff, (1, 28, 28))
    sample_options = {
        f"batch {args.sample_batch}, inference_mode, channels_last, fp32": partial(
            sample, args.sample_batch
        ),
        "batch 64": partial(sample, 64),
        f"batch {args.sample_batch}, no_grad instead of inference_mode": partial(
            sample, args.sample_batch, inference=False
        ),
        f"batch {args.sample_batch}, contiguous": partial(
            sample, args.sample_batch, channels_last=False
        ),
        f"batch {args.sample_batch}, bf16 autocast": partial(
            sample, args.sample_batch, autocast=torch.bfloat16
        ),
    }
    if args.compile:
        sample_options["torch.compile"] = partial(
            sampling_rate, lambda: compiled, (1, 28, 28), args.sample_batch
        )
    sample_rates = median_rounds(sample_options, args.rounds)
    base = next(iter(sample_rates.values()))
    print(
        "\n| sampling option (efficient, 28x28x1) | img*steps/s | vs first row "
        "| s per 1,000 images: DDPM-1000 / DDIM-50 / 20 / 10 |"
    )
    print("|---|---:|---:|---|")
    for k, v in sample_rates.items():
        per = " / ".join(f"{1000 * n / v:.0f}" for n in (1000, 50, 20, 10))
        print(f"| {k} | {v:.0f} | {v / base:.2f}x | {per} |")
    report["options"] = {"train": opt_rates, "sample": sample_rates}
    report["seconds"] = time.perf_counter() - started
    print(f"\nsuite time: {report['seconds'] / 60:.1f} min")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
