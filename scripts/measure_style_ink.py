"""Does a style-conditioned checkpoint draw "thick" with more ink than "thin", class unchanged?

    python scripts/measure_style_ink.py CKPT [--n 32] [--data-root DIR] [--out DIR]

For each class: n samples with style "thick" and n with "thin" (same seeds), their ink (mean
pixel brightness in [0, 1], the quantity the thickness attribute splits the training images
by), and the share a classifier trained on the run's own data assigns to the class asked for.
Writes style_ink.json, style_ink.md and style_grid.png (2 thick + 2 thin per class, one row
per class) into --out (default: the checkpoint's run directory).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import open_dict
from torchvision.utils import save_image

from diffusion_lab.app.build import build_datamodule, load_module
from diffusion_lab.data.loader import to_model_range
from diffusion_lab.errors import UserError, require
from diffusion_lab.metrics.classifier import predict, train_classifier

THIN, THICK = 0, 1  # data.datamodules.thickness_attribute: 1 = more ink than the class median


def ink(images: torch.Tensor) -> torch.Tensor:
    """Mean brightness per image, [-1, 1] images -> [N] in [0, 1]."""
    return ((images.float() + 1) / 2).clamp(0, 1).flatten(1).mean(1)


def measure(args: argparse.Namespace) -> dict:
    module, cfg = load_module(args.ckpt)
    require(
        "thickness" in list(cfg.conditioning.attributes) and module.num_classes > 0,
        f"{args.ckpt} was not trained with class + thickness conditioning (experiment=cifar10_style)",
    )
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    module = module.to(device).eval()
    with open_dict(cfg):
        if args.data_root:
            cfg.data.root = args.data_root
    dm = build_datamodule(cfg)
    dm.setup("fit")
    train = dm.train_data
    n_fit = min(args.classifier_images, len(train["image"]))
    judge = train_classifier(
        to_model_range(train["image"][:n_fit]).to(device),
        train["label"][:n_fit].to(device),
        dm.num_classes,
        epochs=args.classifier_epochs,
    )
    thick_idx = module.attribute_sizes and list(cfg.conditioning.attributes).index("thickness")
    sampler = {"name": "ddim", "steps": args.steps, "eta": 0.0}
    rows, grid = [], []
    for c in range(module.num_classes):
        out = {}
        for style, value in (("thick", THICK), ("thin", THIN)):
            labels = torch.full((args.n,), c, dtype=torch.long, device=device)
            attrs = torch.zeros(
                args.n, len(module.attribute_sizes), dtype=torch.long, device=device
            )
            attrs[:, thick_idx] = value
            # the same seed for both styles: the style is the only difference
            x = module.generate(args.n, labels=labels, attrs=attrs, sampler=sampler, seed=c)
            out[style] = x.cpu()
        names = getattr(dm, "class_names", ()) or ()
        row = {
            "class": c,
            "name": names[c] if c < len(names) else str(c),
            "ink_thick": float(ink(out["thick"]).mean()),
            "ink_thin": float(ink(out["thin"]).mean()),
            "class_kept_thick": float((predict(judge, out["thick"]) == c).float().mean()),
            "class_kept_thin": float((predict(judge, out["thin"]) == c).float().mean()),
        }
        row["ink_difference"] = row["ink_thick"] - row["ink_thin"]
        row["thick_more_ink"] = row["ink_difference"] > 0
        rows.append(row)
        grid += [out["thick"][:2], out["thin"][:2]]
    outdir = Path(args.out) if args.out else Path(args.ckpt).resolve().parent.parent
    outdir.mkdir(parents=True, exist_ok=True)
    save_image((torch.cat(grid) + 1) / 2, outdir / "style_grid.png", nrow=4, padding=1)
    failing = [r["name"] for r in rows if not r["thick_more_ink"]]
    result = {"checkpoint": str(args.ckpt), "n_per_style": args.n, "rows": rows,
              "failing_classes": failing}  # fmt: skip
    (outdir / "style_ink.json").write_text(json.dumps(result, indent=2))
    lines = [
        "| class | ink thick | ink thin | difference | thick > thin | class kept (thick / thin) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['ink_thick']:.4f} | {r['ink_thin']:.4f} | "
            f"{r['ink_difference']:+.4f} | {'yes' if r['thick_more_ink'] else 'NO'} | "
            f"{r['class_kept_thick']:.0%} / {r['class_kept_thin']:.0%} |"
        )
    lines.append("")
    lines.append(
        "thick > thin in every class" if not failing else f"thick <= thin in: {', '.join(failing)}"
    )
    text = "\n".join(lines) + "\n"
    (outdir / "style_ink.md").write_text(text)
    print(text)
    print(f"grid: {outdir / 'style_grid.png'}")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="a checkpoint trained with experiment=cifar10_style")
    p.add_argument("--n", type=int, default=32, help="samples per class and style")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--data-root", default=None, help="where the run's dataset is")
    p.add_argument("--classifier-images", type=int, default=20000)
    p.add_argument("--classifier-epochs", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--cpu", action="store_true")
    args = p.parse_args(argv)
    try:
        require(args.n >= 2, f"--n={args.n} must be >= 2 (the grid shows 2 per style)")
        measure(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
