"""python -m diffusion_lab.viz FIGURE [options] [overrides]: the analysis figures as PNG files.

    python -m diffusion_lab.viz forward data=fashion_mnist schedule.timesteps=300
    python -m diffusion_lab.viz embedding --dim 64 --timesteps 300
    python -m diffusion_lab.viz progression --ckpt outputs/train/runs/<run>/checkpoints/last.ckpt
    python -m diffusion_lab.viz triplets --ckpt <run>/checkpoints/epoch001*.ckpt <run>/checkpoints/last.ckpt
    python -m diffusion_lab.viz all --ckpt <ckpt>          # every figure, in outputs/viz/runs/<time>

`overrides` are the training config's Hydra overrides (data=..., data.root=...); with --ckpt
they apply on top of the config stored in the checkpoint.
"""

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion_lab.app.config import compose_config
from diffusion_lab.errors import UserError, require

FIGURES = ("forward", "embedding", "progression", "triplets", "all")


def compose_train_config(overrides: list[str]) -> DictConfig:
    """conf/train.yaml with overrides, outside a Hydra run (paths relative to the cwd)."""
    from hydra.errors import HydraException

    try:
        cfg = compose_config("train", overrides)
    except HydraException as e:
        raise UserError(str(e).splitlines()[0]) from None
    with open_dict(cfg):
        cfg.paths.root_dir = os.getcwd()
        cfg.paths.output_dir = os.getcwd()
    return cfg


def load_images(cfg: DictConfig, n: int) -> tuple[Any, Any]:
    """n validation images of the configured data set, one per class first."""
    from diffusion_lab.app.build import build_datamodule
    from diffusion_lab.figures.plots import pick_images

    with open_dict(cfg):
        if "num_train" in cfg.data:  # generated data: no need for a full training set
            cfg.data.num_train = n
    dm = build_datamodule(cfg)
    dm.setup("fit")
    return pick_images(dm.val_data, n)


def _load(ckpt: str, overrides: list[str]) -> tuple[Any, DictConfig]:
    from diffusion_lab.app.build import load_module

    module, cfg = load_module(ckpt)
    for o in overrides:
        key = o.split("=", 1)[0]
        require(
            "=" in o and not OmegaConf.is_dict(OmegaConf.select(cfg, key)),
            f"{o}: with --ckpt only key=value overrides of single values apply (e.g. data.root=...)",
        )
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    module.eval()
    return module, cfg


def make_figures(args: argparse.Namespace) -> list[Path]:
    from diffusion_lab.figures import plots as F
    from diffusion_lab.figures.plots import schedules_for, sinusoidal_dim

    which = list(FIGURES[:-1]) if args.figure == "all" else [args.figure]
    needs_ckpt = [f for f in which if f in ("progression", "triplets")]
    if needs_ckpt and not args.ckpt:
        if args.figure != "all":
            raise UserError(f"{args.figure}: --ckpt PATH is required (a .ckpt from a training run)")
        print(f"note: {' and '.join(needs_ckpt)} need a trained model: add --ckpt PATH")
        which = [f for f in which if f not in needs_ckpt]
    out = Path(args.out)
    single = args.figure != "all" and len(args.ckpt or []) <= 1 and out.suffix == ".png"
    folder = out.parent if single else out
    module, cfg = _load(args.ckpt[0], args.overrides) if args.ckpt else (None, None)
    if cfg is None:
        cfg = compose_train_config(args.overrides)
    T = args.timesteps or int(cfg.schedule.timesteps)
    written = []

    def save(fig, name: str) -> None:
        path = out if single else folder / f"{name}.png"
        written.append(F.save_figure(fig, path, dpi=args.dpi))

    if "forward" in which:
        images, _ = load_images(cfg, args.n)
        save(
            F.forward_process_figure(images, schedules_for(T, cfg.schedule), args.steps), "forward"
        )
    if "embedding" in which:
        if args.dim:
            dim = args.dim
        elif module is not None:
            dim = sinusoidal_dim(module.net)
        else:
            from diffusion_lab.app.build import build_net

            dim = sinusoidal_dim(build_net(cfg))
        save(F.time_embedding_figure(T, dim), "embedding")
    sampler = {"steps": args.sampler_steps} if args.sampler_steps else None
    if "progression" in which:
        fig = F.denoising_progression_figure(module, args.n, args.steps, sampler=sampler)
        save(fig, "progression")
    if "triplets" in which:
        images, labels = load_images(cfg, args.n)
        for i, ckpt in enumerate(args.ckpt):
            m = module if i == 0 else _load(ckpt, args.overrides)[0]
            fig = F.triplets_figure(m, images, labels, args.t, title=f"{Path(ckpt).name}")
            save(fig, "triplets" if len(args.ckpt) == 1 else f"triplets_{Path(ckpt).stem}")
    return written


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m diffusion_lab.viz", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("figure", choices=FIGURES)
    p.add_argument("overrides", nargs="*", help="training-config overrides, e.g. data=mnist")
    p.add_argument("--ckpt", nargs="+", help="checkpoint(s); triplets: one figure per checkpoint")
    p.add_argument(
        "--out",
        "--output-dir",
        dest="out",
        default=None,
        help="a folder (default: outputs/viz/runs/<time>), or a .png file for one figure",
    )
    p.add_argument("--n", type=int, default=4, help="images / samples (default 4)")
    p.add_argument("--steps", type=int, default=10, help="timesteps shown (default 10)")
    p.add_argument("--timesteps", type=int, default=None, help="T (default: the config's)")
    p.add_argument("--dim", type=int, default=None, help="embedding width (default: the model's)")
    p.add_argument("--t", type=int, nargs="+", default=None, help="triplets: timesteps")
    p.add_argument("--sampler-steps", type=int, default=None, help="progression: DDIM steps")
    p.add_argument("--dpi", type=int, default=100)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.out is None:  # a new folder per invocation, like every other command
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        args.out = f"outputs/viz/runs/{stamp}"
    try:
        require(args.n >= 1, f"--n={args.n} must be >= 1")
        require(args.steps >= 1, f"--steps={args.steps} must be >= 1")
        for path in make_figures(args):
            print(path)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
