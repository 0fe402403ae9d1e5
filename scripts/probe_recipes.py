"""Equal-CPU-minute probes of training recipes, scored by the same judge.

    python scripts/probe_recipes.py [--minutes 5] [--n 500] [--probes baseline,logit_normal,...]
    python scripts/probe_recipes.py --list

Each probe is a set of `python -m diffusion_lab.train` overrides on top of `--base` (default:
the default run). Every probe trains for the same wall-clock budget (`trainer.max_time`, a
constant learning rate unless the probe says otherwise), then `python -m diffusion_lab.evaluate`
samples `--n` images with the checkpoint's own sampler and scores them with one judge for all
probes (the dataset classifier, trained once and cached in <out>/judge/eval/): FID and KID in
its features, requested-class accuracy overall and per class. Writes <out>/probes.json and
<out>/probes.md (one row per probe); each probe's run directory keeps its grids and logs.
Run it on an otherwise idle machine: the probes compare images per CPU-minute.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from diffusion_lab.hardware import cpu_name

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"

# name -> (what it changes, overrides). The levers of the default pattern run.
PROBES: dict[str, tuple[str, list[str]]] = {
    "baseline": (
        "the default run: efficient U-Net, x0, uniform t, Adam 1e-3, batch 64, the CPU's default "
        "precision",
        [],
    ),
    "fp32": ("float32 where the CPU default is bf16-mixed", ["trainer.precision=32"]),
    "logit_normal": (
        "training t drawn logit-normal, mean 1 (median t = 0.73 T)",
        ["diffusion.timestep_sampling=logit_normal", "diffusion.timestep_mean=1.0"],
    ),
    "v": ("v-prediction", ["diffusion.objective=v"]),
    "edm": ("the EDM formulation, Heun on Karras sigmas (19 calls)", ["diffusion=edm"]),
    "attn": (
        "attention U-Net 16/32/64/128, attention at 8x8 and 4x4 with position embeddings",
        [
            "model=attn_unet",
            "model.base=16",
            "model.mults=[1,2,4,8]",
            "model.attn_resolutions=[8,4]",
            "+model.position_embedding=true",
        ],
    ),
    "lr2e-3_warmup": (
        "Adam 2e-3 after 100 warmup steps",
        ["optimizer.lr=2e-3", "lr_warmup_steps=100"],
    ),
    "batch32": ("batch 32", ["data.batch_size=32"]),
    "fresh_data": (
        "102,400 fresh patterns seen once instead of 12,800 x 8",
        ["data.num_train=102400"],
    ),
    "hflip": ("horizontal flips (a pattern's family survives them)", ["+data.hflip=true"]),
    "ema0.995": ("EMA decay 0.995 (a 200-step horizon) instead of 0.999", ["ema_decay=0.995"]),
    "self_cond": ("self-conditioning", ["diffusion.self_condition=true"]),
}


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}); see {log}")
    return time.perf_counter() - t0


def probe(name: str, overrides: list[str], args: argparse.Namespace, out: Path) -> dict:
    run_dir = out / name
    minutes, seconds = divmod(int(round(args.minutes * 60)), 60)
    train = [
        sys.executable, "-m", "diffusion_lab.train", *args.base, *overrides,
        "trainer.max_epochs=1000", f"trainer.max_time=00:00:{minutes:02d}:{seconds:02d}",
        "callbacks.progress_bar=null", f"seed={args.seed}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    train_s = run(train, out / f"{name}.train.log")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    evaluate = [
        sys.executable, "-m", "diffusion_lab.evaluate",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"n={args.n}",
        "metrics=[fid,kid,accuracy]", "pattern_sources=[generator]",
        f"output_dir={out / 'judge'}", f"tag={name}", *args.eval,
    ]  # fmt: skip
    run(evaluate, out / f"{name}.eval.log")
    scores = json.loads((out / "judge" / f"eval_{name}.json").read_text())
    return {
        "overrides": overrides,
        "train_seconds": round(train_s, 1),
        "steps": metrics.get("global_step"),
        "precision": str(OmegaConf.load(run_dir / "config.yaml").trainer.precision),
        "val_loss": metrics.get("val/loss"),
        "images_per_second": metrics.get("train_images_per_sec"),
        "fid": scores.get("fid"),
        "kid": scores.get("kid"),
        "accuracy": scores.get("accuracy"),
        "accuracy_per_class": scores.get("accuracy_per_class"),
        "sampler": scores.get("sampler"),
        "grid": str(run_dir / "samples" / "final.png"),
    }


def table(report: dict) -> str:
    rows = report["probes"]
    names = next(iter(rows.values()))["accuracy_per_class"] or {}
    head = "| probe | precision | steps | val loss | FID | accuracy | " + " | ".join(names) + " |"
    lines = [
        f"Probes of {report['minutes']:g} training minutes each on {report['cpu']} "
        f"({report['cores']} cores), {report['n']} samples each, one judge; "
        f"base overrides: {report['base'] or 'none (the default run)'}",
        "",
        head,
        "|---|---|" + "---:|" * (4 + len(names)),
    ]
    for name, r in rows.items():
        per = r["accuracy_per_class"] or {}
        val = "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        lines.append(
            f"| {name} | {r.get('precision', '-')} | {r['steps']} | {val} | {r['fid']:.1f} | {100 * r['accuracy']:.1f}% | "
            + " | ".join(f"{100 * per.get(c, 0):.0f}" for c in names)
            + " |"
        )
    lines += ["", *(f"- {n}: {PROBES[n][0]}" for n in rows if n in PROBES)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--probes", default="baseline,logit_normal,attn,edm")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per probe")
    p.add_argument("--n", type=int, default=500, help="samples scored per probe")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--base", nargs="*", default=[], help="train overrides shared by every probe")
    p.add_argument("--eval", nargs="*", default=[], help="evaluate overrides, e.g. sampler=ddim")
    p.add_argument("--out", default="outputs/probes")
    p.add_argument("--list", action="store_true", help="print the probes and exit")
    args = p.parse_args(argv)
    if args.list:
        for name, (what, overrides) in PROBES.items():
            print(f"{name:16s} {what}\n{'':16s} {' '.join(overrides) or '(no overrides)'}")
        return
    names = [n.strip() for n in args.probes.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        p.error(f"--probes: {unknown} not known; choose from {list(PROBES)}")
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "probes.json"
    report = json.loads(path.read_text()) if path.is_file() else {"probes": {}}
    report.update(
        minutes=args.minutes, n=args.n, base=" ".join(args.base), cpu=cpu_name(),
        cores=len(os.sched_getaffinity(0)),
    )  # fmt: skip
    for name in names:
        print(f"probe {name}: {PROBES[name][0]}", flush=True)
        report["probes"][name] = probe(name, PROBES[name][1], args, out)
        r = report["probes"][name]
        print(
            f"  {r['steps']} steps, FID {r['fid']:.1f}, accuracy {100 * r['accuracy']:.1f}%",
            flush=True,
        )
        path.write_text(json.dumps(report, indent=2))  # each probe kept as soon as it ends
        (out / "probes.md").write_text(table(report))
    print(table(report))


if __name__ == "__main__":
    main()
