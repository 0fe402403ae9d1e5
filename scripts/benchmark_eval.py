"""Evaluation benchmark on real data, CPU: samplers on MNIST, and the pattern-set domain CLIP.

    python scripts/benchmark_eval.py [--epochs 2] [--n 500] [--ddpm-n 500] [--clip-steps 400]
    python scripts/benchmark_eval.py --ckpt outputs/.../last.ckpt      # reuse a trained checkpoint

1. Trains a class-conditional MNIST model with the framework (the default efficient U-Net,
   x0-prediction, linear betas, T=1000) on real MNIST copied from ../shared/datasets, unless
   --ckpt is given.
2. Samples the same number of images (class-balanced) with DDPM (1000 steps) and DDIM
   50/20/10 steps, and reports for each: FID and KID against 2,000 validation images with
   the dataset feature network (a SmallClassifier trained on 20,000 MNIST training images;
   not comparable with Inception FID), class accuracy of the samples judged by that same
   classifier, and wall time per 1,000 samples (measured on --n or --ddpm-n images, scaled).
3. Trains the pattern-set domain CLIP at conf/clip/domain_patterns.yaml's settings and
   reports its zero-shot family accuracy on 2,000 held-out patterns.

Writes benchmark_eval.json and samplers.png (one row per sampler) to --out.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict
from torchvision.utils import save_image

from diffusion_lab.app.build import load_module
from diffusion_lab.app.config import compose_config
from diffusion_lab.app.evaluate import generate, load_data
from diffusion_lab.app.train import train
from diffusion_lab.data.loader import to_model_range
from diffusion_lab.metrics.classifier import accuracy, feature_classifier
from diffusion_lab.metrics.fid import DatasetFeatures, FeatureDistance

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def compose_cfg(name: str, overrides: list[str], out: Path):
    cfg = compose_config(name, overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.log_dir = str(out)
        cfg.paths.output_dir = str(out)
    return cfg


def train_mnist(out: Path, data_root: Path, epochs: int, batch: int) -> tuple[Path, float]:
    cfg = compose_cfg(
        "train",
        [
            "data=mnist",
            f"data.root={data_root}",
            f"trainer.max_epochs={epochs}",  # validation (val/loss, best checkpoint) after each
            f"data.batch_size={batch}",
            "trainer.enable_model_summary=false",
            "callbacks.progress_bar=null",
            "callbacks.sample_grid.every_n_epochs=0",
            "callbacks.sample_grid.n=20",
            "sampler.steps=20",
            "data.val_size=500",
        ],
        out,
    )
    t0 = time.perf_counter()
    metrics = train(cfg)
    print(
        f"trained MNIST model: {metrics['global_step']} steps, val/loss {metrics['val/loss']:.4f}, "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return Path(metrics["last_checkpoint"]), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ckpt", default=None, help="a trained MNIST checkpoint (skips training)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs over MNIST's 60,000")
    p.add_argument("--batch", type=int, default=128, help="training batch size")
    p.add_argument("--n", type=int, default=500, help="samples per DDIM setting")
    p.add_argument("--ddpm-n", type=int, default=500, help="samples for DDPM-1000")
    p.add_argument("--n-real", type=int, default=2000, help="validation images as the real set")
    p.add_argument("--classifier-train", type=int, default=20000, help="judge's training images")
    p.add_argument("--ddim-steps", default="50,20,10")
    p.add_argument(
        "--clip-steps", type=int, default=None, help="domain CLIP steps (default: config)"
    )
    p.add_argument("--skip-clip", action="store_true")
    p.add_argument("--out", default=str(ROOT / "outputs" / "benchmark_eval"))
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    tmp = Path(tempfile.mkdtemp(prefix="dlab_bench_"))
    try:
        shutil.copytree(SHARED / "MNIST", tmp / "MNIST")  # torchvision unpacks next to the .gz
        if args.ckpt:
            ckpt = Path(args.ckpt)
        else:
            ckpt, seconds = train_mnist(out / "mnist_run", tmp, args.epochs, args.batch)
            report["train_seconds"] = seconds
        module, train_cfg = load_module(ckpt)
        report["ckpt"] = str(ckpt)
        with open_dict(train_cfg):
            train_cfg.data.val_size = None
        dm = load_data(train_cfg, str(tmp))  # all 10,000 test images for the real set
        settings = {
            "train_size": args.classifier_train,
            "epochs": 3,
            "batch_size": 128,
            "lr": 1e-3,
            "seed": 0,
        }
        t0 = time.perf_counter()
        judge, info = feature_classifier(out, dm, settings, torch.device("cpu"), "MNIST-bench")
        report["classifier"] = {**info, "seconds": time.perf_counter() - t0}
        print(
            f"feature classifier: val accuracy {info['val_accuracy']:.4f} ({info['train_images']} images)",
            flush=True,
        )
        dist = FeatureDistance(DatasetFeatures(judge), kid_subsets=50, kid_subset_size=1000)
        real = to_model_range(dm.val_data["image"][: args.n_real])
        dist.add_real(real)
        # reference: real held-out images (not in the real set) through the same metric
        held = dm.val_data["image"][args.n_real : args.n_real + args.n]
        ref = dist.score(to_model_range(held))
        ref["accuracy"] = accuracy(
            judge, to_model_range(held), dm.val_data["label"][args.n_real : args.n_real + args.n]
        )
        report["real_reference"] = ref
        rows = []
        grids = []
        samplers = [("DDPM", {"name": "ddpm"}, args.ddpm_n)] + [
            (f"DDIM {s}", {"name": "ddim", "steps": int(s), "eta": 0.0}, args.n)
            for s in args.ddim_steps.split(",")
        ]
        for name, sampler, n in samplers:
            labels = torch.arange(n) % module.num_classes
            images, seconds = generate(module, n, labels, sampler, seed=0, batch_size=250)
            scores = dist.score(images)
            acc = accuracy(judge, images, labels)
            row = {
                "sampler": name,
                "n": n,
                **scores,
                "accuracy": acc,
                "seconds_per_1000": seconds / n * 1000,
            }
            rows.append(row)
            print(row, flush=True)
            grids.append(images[labels.argsort(stable=True)][:: max(1, n // 20)][:20])
        report["samplers"] = rows
        save_image(
            (torch.cat(grids) + 1) / 2, out / "samplers.png", nrow=20, padding=1, pad_value=1.0
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if not args.skip_clip:
        from diffusion_lab.metrics.domain_clip import train_domain_clip

        ccfg = compose_cfg("evaluate", ["clip=domain_patterns"], out).clip
        t = OmegaConf.to_container(ccfg.train, resolve=True)
        t.pop("output_dir")
        if args.clip_steps:
            t["steps"] = args.clip_steps
        m = train_domain_clip(
            out / "domain_clip", OmegaConf.to_container(ccfg.architecture, resolve=True), **t
        )
        report["domain_clip"] = m
        print(
            f"domain CLIP: zero-shot family accuracy {m['zero_shot_family_accuracy']:.4f} on "
            f"{m['held_out_patterns']} held-out patterns, {m['train_seconds']:.0f} s training",
            flush=True,
        )

    (out / "benchmark_eval.json").write_text(json.dumps(report, indent=2))
    print(
        f"\nMNIST, {report['ckpt']}; FID/KID: dataset features (SmallClassifier, "
        f"val acc {report['classifier']['val_accuracy']:.4f}) vs {args.n_real} validation images\n"
    )
    print("| sampler | samples | FID | KID | class accuracy | s per 1,000 samples |")
    print("|---|---:|---:|---:|---:|---:|")
    ref = report["real_reference"]
    print(
        f"| real held-out images | {args.n} | {ref['fid']:.2f} | {ref['kid']:.4f} | {ref['accuracy']:.3f} | - |"
    )
    for r in report["samplers"]:
        print(
            f"| {r['sampler']} | {r['n']} | {r['fid']:.2f} | {r['kid']:.4f} | {r['accuracy']:.3f} | {r['seconds_per_1000']:.1f} |"
        )
    if "domain_clip" in report:
        m = report["domain_clip"]
        print(
            f"\nDomain CLIP: {m['zero_shot_family_accuracy']:.4f} zero-shot family accuracy on "
            f"{m['held_out_patterns']} held-out patterns ({m['steps']} steps, batch {m['batch_size']}, "
            f"{m['train_seconds']:.0f} s)"
        )
        print("| " + " | ".join(m["zero_shot_per_family"]) + " |")
        print("|" + "---:|" * len(m["zero_shot_per_family"]))
        print("| " + " | ".join(f"{v:.3f}" for v in m["zero_shot_per_family"].values()) + " |")
    print(f"\nwrote {out / 'benchmark_eval.json'} and {out / 'samplers.png'}")


if __name__ == "__main__":
    main()
