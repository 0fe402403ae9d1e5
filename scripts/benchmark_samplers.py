"""Sample quality per network call: every sampler at 5, 10, 20 and 50 NFE on a class-conditional
MNIST checkpoint and a pattern-set checkpoint, with DDPM at all T steps as the reference.

    python scripts/benchmark_samplers.py [--mnist-ckpt PATH] [--patterns-ckpt PATH] [--device cuda]
    python scripts/benchmark_samplers.py --quick      # tiny end-to-end check (patterns, ~1 min CPU)

For each dataset: trains the checkpoint with the framework unless given (MNIST from
../shared/datasets; the pattern set is generated), trains (or loads from the cache) the
dataset's feature classifier (SmallClassifier), then for every sampler and NFE draws --n
class-balanced images (same seed for every setting) and reports FID and KID in the
classifier's features against --n-real validation images, the classifier's class accuracy
on the samples, and seconds per 1,000 images. NFE counts network calls per image: Heun's
two per step (2 steps - 1 in all); with classifier-free guidance every call is two forward
passes. Writes samplers_nfe.json, samplers_nfe.png (FID and accuracy vs NFE, one line per
sampler, DDPM-T dashed) and the same figure to TensorBoard (--out/tensorboard).
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from diffusion_lab.app.build import load_module  # noqa: E402
from diffusion_lab.app.config import compose_config  # noqa: E402
from diffusion_lab.app.evaluate import load_data  # noqa: E402
from diffusion_lab.app.train import train  # noqa: E402
from diffusion_lab.data.loader import to_model_range  # noqa: E402
from diffusion_lab.diffusion import make_sampler  # noqa: E402
from diffusion_lab.metrics.classifier import accuracy, feature_classifier  # noqa: E402
from diffusion_lab.metrics.fid import DatasetFeatures, FeatureDistance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"

# sampler -> time grid it is measured on (as its conf/sampler/*.yaml sets)
SAMPLERS = {
    "ddim": "linspace",
    "ddpm": "linspace",
    "euler": "karras",
    "heun": "karras",
    "dpmpp_2m": "karras",
    "dpmpp_2m_sde": "karras",
}

QUICK = [
    "data.num_train=256",
    "data.num_val=128",
    "data.image_size=16",
    "data.batch_size=32",
    "model.channels=[8,16]",
    "model.time_dim=16",
    "schedule.timesteps=50",
    "trainer.limit_val_batches=1",
]


def compose_cfg(overrides: list[str], out: Path):
    cfg = compose_config("train", overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.log_dir = str(out)
        cfg.paths.output_dir = str(out)
    return cfg


def train_checkpoint(dataset: str, out: Path, data_root: Path | None, args) -> Path:
    overrides = [
        f"data={dataset}",
        "conditioning=class",
        f"trainer.max_epochs={args.epochs if dataset == 'mnist' else args.patterns_epochs}",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        "callbacks.sample_grid.every_n_epochs=0",
        "callbacks.sample_grid.n=8",
        "sampler.steps=10",
        f"trainer={'gpu' if args.device == 'cuda' else 'cpu'}",
    ]
    if data_root is not None:
        overrides.append(f"data.root={data_root}")
    if args.quick:
        overrides += QUICK
    cfg = compose_cfg(overrides, out)
    t0 = time.perf_counter()
    metrics = train(cfg)
    print(
        f"trained {dataset}: {metrics['global_step']} steps, val/loss {metrics['val/loss']:.4f}, "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return Path(metrics["last_checkpoint"])


def settings_for(name: str, nfe: int, num_timesteps: int) -> dict:
    """The sampler config that makes about `nfe` network calls per image."""
    steps = (nfe + 1) // 2 if name == "heun" else nfe
    return {"name": name, "steps": min(steps, num_timesteps), "spacing": SAMPLERS[name]}


def draw(module, n: int, sampler: dict, batch_size: int) -> tuple[torch.Tensor, float]:
    labels = torch.arange(n) % module.num_classes
    if module.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    images = module.generate(n, labels=labels, sampler=sampler, seed=0, batch_size=batch_size)
    if module.device.type == "cuda":
        torch.cuda.synchronize()
    return images.cpu(), time.perf_counter() - t0


def benchmark(dataset: str, ckpt: Path, data_root: Path | None, out: Path, args) -> dict:
    module, train_cfg = load_module(ckpt)
    module.to(args.device)
    with open_dict(train_cfg):
        train_cfg.data.val_size = None
    dm = load_data(train_cfg, str(data_root) if data_root else None)
    settings = {
        "train_size": args.classifier_train,
        "epochs": 1 if args.quick else 3,
        "batch_size": 128,
        "lr": 1e-3,
        "seed": 0,
    }
    judge, info = feature_classifier(
        out, dm, settings, torch.device(args.device), f"{dataset}-bench"
    )
    judge = judge.cpu()
    dist = FeatureDistance(
        DatasetFeatures(judge),
        kid_subsets=10 if args.quick else 50,
        kid_subset_size=min(1000, args.n, args.n_real),
    )
    dist.add_real(to_model_range(dm.val_data["image"][: args.n_real]))
    T = module.diffusion.num_timesteps
    result = {"ckpt": str(ckpt), "classifier_val_accuracy": info["val_accuracy"], "rows": []}

    def measure(name: str, sampler: dict, n: int) -> dict:
        images, seconds = draw(module, n, sampler, args.batch_size)
        labels = torch.arange(n) % module.num_classes
        row = {
            "sampler": name,
            "spacing": sampler.get("spacing"),
            "steps": sampler.get("steps") or T,
            "nfe": make_sampler(module.diffusion, sampler).nfe,
            "n": n,
            **dist.score(images),
            "accuracy": accuracy(judge, images, labels),
            "seconds_per_1000": seconds / n * 1000,
        }
        print(f"{dataset}: {row}", flush=True)
        return row

    reference = {"name": "ddpm", "steps": None, "spacing": "linspace"}
    result["reference"] = measure("ddpm", reference, args.ddpm_n)
    for name in args.samplers:
        for nfe in args.nfe:
            result["rows"].append(measure(name, settings_for(name, nfe, T), args.n))
    return result


def plot(report: dict, path: Path):
    datasets = list(report["datasets"])
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.5 * len(datasets), 7), squeeze=False)
    for col, dataset in enumerate(datasets):
        res = report["datasets"][dataset]
        for row, (metric, label) in enumerate(
            [("fid", "FID (dataset features)"), ("accuracy", "class accuracy")]
        ):
            ax = axes[row][col]
            for name in dict.fromkeys(r["sampler"] for r in res["rows"]):
                pts = [(r["nfe"], r[metric]) for r in res["rows"] if r["sampler"] == name]
                ax.plot(*zip(*pts), marker="o", label=f"{name} ({SAMPLERS[name]})")
            ref = res["reference"]
            ax.axhline(ref[metric], color="k", ls="--", lw=1, label=f"ddpm, all {ref['nfe']} steps")
            ax.set_xscale("log")
            ax.set_xlabel("network calls per image (NFE)")
            ax.set_ylabel(label)
            if metric == "fid":
                ax.set_yscale("log")
                ax.set_title(dataset)
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def table(report: dict) -> str:
    lines = []
    for dataset, res in report["datasets"].items():
        lines += [
            f"\n{dataset} ({res['ckpt']}; judge val accuracy {res['classifier_val_accuracy']:.4f})\n",
            "| sampler | grid | steps | NFE | FID | KID | class accuracy | s / 1,000 images |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in [res["reference"], *res["rows"]]:
            lines.append(
                f"| {r['sampler']} | {r['spacing']} | {r['steps']} | {r['nfe']} | {r['fid']:.2f} | "
                f"{r['kid']:.4f} | {r['accuracy']:.3f} | {r['seconds_per_1000']:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mnist-ckpt", default=None, help="a class-conditional MNIST checkpoint")
    p.add_argument("--patterns-ckpt", default=None, help="a class-conditional pattern-set one")
    p.add_argument("--datasets", default="mnist,patterns")
    p.add_argument("--epochs", type=int, default=2, help="MNIST training epochs")
    p.add_argument("--patterns-epochs", type=int, default=8)
    p.add_argument("--n", type=int, default=1000, help="samples per sampler and NFE")
    p.add_argument("--ddpm-n", type=int, default=1000, help="samples for the DDPM-T reference")
    p.add_argument("--n-real", type=int, default=2000, help="validation images as the real set")
    p.add_argument("--classifier-train", type=int, default=20000)
    p.add_argument("--nfe", default="5,10,20,50")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    p.add_argument("--out", default=str(ROOT / "outputs" / "benchmark_samplers"))
    args = p.parse_args()
    args.nfe = [int(v) for v in args.nfe.split(",")]
    args.samplers = [s for s in args.samplers.split(",") if s]
    datasets = args.datasets.split(",")
    if args.quick:
        datasets = [d for d in datasets if d == "patterns" or (d == "mnist" and args.mnist_ckpt)]
        args.n, args.ddpm_n, args.n_real, args.classifier_train = 32, 32, 64, 256
        args.nfe, args.epochs, args.patterns_epochs = [2, 4], 1, 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "device": args.device, "datasets": {}}
    tmp = Path(tempfile.mkdtemp(prefix="dlab_samplers_"))
    try:
        for dataset in datasets:
            root = None
            if dataset == "mnist":
                shutil.copytree(SHARED / "MNIST", tmp / "MNIST")  # torchvision unpacks in place
                root = tmp
            given = args.mnist_ckpt if dataset == "mnist" else args.patterns_ckpt
            ckpt = (
                Path(given)
                if given
                else train_checkpoint(dataset, out / f"{dataset}_run", root, args)
            )
            report["datasets"][dataset] = benchmark(dataset, ckpt, root, out, args)
            (out / "samplers_nfe.json").write_text(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fig = plot(report, out / "samplers_nfe.png")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "tensorboard")) as writer:
        writer.add_figure("samplers/quality_vs_nfe", fig)
    print(table(report))
    print(f"\nwrote {out / 'samplers_nfe.json'} and {out / 'samplers_nfe.png'}")


if __name__ == "__main__":
    main()
