"""Pattern inpainting, measured: train `experiment=patterns_inpaint`, then report masked-pixel
accuracy per pattern family x mask kind on held-out patterns, beside two classical baselines
on the same masks (nearest-known-pixel fill, OpenCV Telea).

    python scripts/benchmark_inpaint.py                         # the experiment as configured (~30 min)
    python scripts/benchmark_inpaint.py --steps 3000            # another number of steps
    python scripts/benchmark_inpaint.py --minutes 2 --eval-n 200  # a smoke check
    python scripts/benchmark_inpaint.py --ckpt path/to/last.ckpt  # evaluate a trained model

The model is evaluated three ways: one forward pass at t = T-1 (its x0 prediction from pure
noise), DDIM (--ddim-steps) and, on a subset, RePaint (--repaint-n, --repaint-steps). Held-out
patterns come from a seed no training run uses. OpenCV is optional (pip install
"diffusion-lab[bench]"); without it the Telea column is skipped with a note.
Writes results.json, table.md and panel.png to --out.
"""

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import open_dict
from scipy import ndimage
from torchvision.utils import save_image

from diffusion_lab.app.build import load_module
from diffusion_lab.app.config import compose_config
from diffusion_lab.app.train import train
from diffusion_lab.data.loader import to_model_range
from diffusion_lab.data.masks import masks_of_kind
from diffusion_lab.data.patterns import FAMILIES, generate_patterns_with_info
from diffusion_lab.metrics.inpainting import masked_pixel_correct
from diffusion_lab.training.inpaint_callback import mask_as_image, masked_input, panel_rows

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("center_box", "random_boxes", "vertical_stripe", "horizontal_stripe", "scattered", "half")
HELD_OUT_SEED = 987_654_321  # training uses seed and seed + 10_007 (patterns), never this


def nearest_fill(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Every unknown pixel takes the colour of the nearest known pixel (Euclidean)."""
    out = images.copy()
    for i in range(len(images)):
        unknown = masks[i, 0] == 0
        if not unknown.any() or unknown.all():
            continue
        _, (iy, ix) = ndimage.distance_transform_edt(unknown, return_indices=True)
        out[i] = images[i][:, iy, ix]
    return out


def telea_fill(images: np.ndarray, masks: np.ndarray, radius: int = 3) -> np.ndarray | None:
    try:
        import cv2
    except ImportError:
        print("note: opencv-python-headless is not installed; skipping the Telea column")
        return None
    out = np.empty_like(images)
    for i in range(len(images)):
        hwc = np.ascontiguousarray(images[i].transpose(1, 2, 0))
        fill = ((masks[i, 0] == 0) * 255).astype(np.uint8)  # OpenCV: non-zero = inpaint
        out[i] = cv2.inpaint(hwc, fill, radius, cv2.INPAINT_TELEA).transpose(2, 0, 1)
    return out


def train_model(args: argparse.Namespace, out: Path) -> str:
    overrides = [
        "experiment=patterns_inpaint",
        f"seed={args.seed}",
        "callbacks.progress_bar=null",
        "callbacks.sample_grid=null",
        "callbacks.inpaint_validation.samplers=[onepass]",
        "trainer.enable_model_summary=false",
        "+trainer.enable_progress_bar=false",
    ]
    if args.steps:
        overrides += [f"trainer.max_steps={args.steps}", "trainer.max_epochs=100000"]
    if args.minutes:
        sec = int(args.minutes * 60)  # Lightning's "DD:HH:MM:SS"
        hms = f"00:{sec // 3600:02d}:{sec % 3600 // 60:02d}:{sec % 60:02d}"
        overrides += [f"trainer.max_time='{hms}'", "trainer.max_epochs=100000"]
    overrides += args.override
    cfg = compose_config("train", overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(out / "train")
    t0 = time.perf_counter()
    metrics = train(cfg)
    print(
        f"trained {metrics['global_step']} steps in {(time.perf_counter() - t0) / 60:.1f} min "
        f"({metrics['train_images_per_sec']:.0f} img/s), val/loss {metrics['val/loss']:.4f}"
    )
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics["last_checkpoint"]


def run_model(
    module, known: torch.Tensor, mask: torch.Tensor, sampler: dict, batch: int
) -> torch.Tensor:
    outs = []
    for i in range(0, len(known), batch):
        outs.append(
            module.generate(
                len(known[i : i + batch]),
                known=known[i : i + batch],
                mask=mask[i : i + batch],
                sampler=sampler,
                seed=i,
            )
        )
    return torch.cat(outs)


def table(results: dict[str, dict], kinds: tuple[str, ...]) -> str:
    """One markdown table per method: family rows x mask-kind columns, with margins."""
    lines = []
    for method, r in results.items():
        cells = r["cells"]
        lines += [
            f"**{method}** ({r['n']} inpaintings; overall {100 * r['overall']:.1f}%)",
            "",
            "| family | " + " | ".join(kinds) + " | all |",
            "|---|" + "---:|" * (len(kinds) + 1),
        ]
        for fam in FAMILIES:
            if fam not in r["family"]:
                continue
            row = [cells.get(f"{fam}/{k}") for k in kinds]
            lines.append(
                f"| {fam} | "
                + " | ".join("" if v is None else f"{100 * v:.1f}" for v in row)
                + f" | {100 * r['family'][fam]:.1f} |"
            )
        lines.append(
            "| **all** | "
            + " | ".join(f"{100 * r['kind'][k]:.1f}" if k in r["kind"] else "" for k in kinds)
            + f" | **{100 * r['overall']:.1f}** |"
        )
        lines.append("")
    return "\n".join(lines)


def invisible_pixels(shape_maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample, the pixels to fill that only shapes lying wholly under the mask cover
    (shape_maps [N, 4, H, W] bool, mask [N, 1, H, W], 1 = known): nothing in the input says
    those shapes exist, so no method can be expected to fill these pixels."""
    known = mask[:, 0] > 0.5
    seen = (shape_maps & known[:, None]).flatten(2).any(2)[..., None, None]
    hidden, visible = (shape_maps & ~seen).any(1), (shape_maps & seen).any(1)
    return (hidden & ~visible & ~known).flatten(1).sum(1)


def summarise(
    correct: torch.Tensor, total: torch.Tensor, fam: torch.Tensor, kind: torch.Tensor
) -> dict:
    """Accuracy overall, per family, per mask kind and per cell from per-sample pixel counts."""

    def acc(sel: torch.Tensor) -> float:
        return float(correct[sel].sum()) / max(1, int(total[sel].sum()))

    out = {"n": len(correct), "overall": acc(torch.ones_like(fam, dtype=torch.bool))}
    out["family"] = {f: acc(fam == i) for i, f in enumerate(FAMILIES) if (fam == i).any()}
    out["kind"] = {k: acc(kind == j) for j, k in enumerate(KINDS) if (kind == j).any()}
    out["cells"] = {
        f"{f}/{k}": acc((fam == i) & (kind == j))
        for i, f in enumerate(FAMILIES)
        for j, k in enumerate(KINDS)
        if ((fam == i) & (kind == j)).any()
    }
    out["mean_of_families"] = float(np.mean(list(out["family"].values())))
    out["min_family"] = min(out["family"].values())
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (fixed work)")
    p.add_argument("--minutes", type=float, default=None, help="training wall-clock budget")
    p.add_argument("--ckpt", default=None, help="evaluate this checkpoint instead of training")
    p.add_argument("--eval-n", type=int, default=1000, help="held-out patterns (x 6 mask kinds)")
    p.add_argument(
        "--passes", type=int, default=3, help="refinement passes of a self-conditioned model"
    )
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--ddim-n", type=int, default=None, help="patterns for DDIM (default: all)")
    p.add_argument("--repaint-n", type=int, default=0, help="patterns for RePaint (0: skip)")
    p.add_argument("--repaint-steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("override", nargs="*", help="extra Hydra overrides for training")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(
        args.out
        or ROOT / "outputs" / "benchmark_inpaint" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    )
    out.mkdir(parents=True, exist_ok=True)
    ckpt = args.ckpt or train_model(args, out)
    module, cfg = load_module(ckpt)
    module.eval()
    size = cfg["data"]["image_size"]

    # held-out patterns; every pattern is inpainted under every mask kind
    images_u8, families, _, info = generate_patterns_with_info(
        args.eval_n, size, HELD_OUT_SEED, shape_maps=True
    )
    masks = torch.cat(
        [masks_of_kind(k, args.eval_n, size, seed=HELD_OUT_SEED + j) for j, k in enumerate(KINDS)]
    )
    images_u8 = images_u8.repeat(len(KINDS), 1, 1, 1)
    fam = families.repeat(len(KINDS))
    kind = torch.arange(len(KINDS)).repeat_interleave(args.eval_n)
    truth = to_model_range(images_u8)
    maskf = masks.float()
    results, timing, filled = {}, {}, {}

    def record(
        name: str, result: torch.Tensor, sel: torch.Tensor | None = None, seconds: float = 0.0
    ) -> None:
        s = sel if sel is not None else torch.arange(len(truth))
        correct, total = masked_pixel_correct(result, truth[s], maskf[s])
        results[name] = summarise(correct, total, fam[s], kind[s])
        timing[name] = seconds
        filled[name] = (result, s)
        r = results[name]
        print(
            f"{name:<28} overall {100 * r['overall']:.2f}%  mean of families "
            f"{100 * r['mean_of_families']:.2f}%  worst family {100 * r['min_family']:.2f}%  "
            f"({seconds:.0f} s, n={r['n']})",
            flush=True,
        )

    # the ceiling: every pixel right except those of shapes the mask hides completely
    total = (1 - maskf).flatten(1).sum(1)
    unseen = invisible_pixels(info["shape_maps"].repeat(len(KINDS), 1, 1, 1), maskf)
    ceiling = summarise(total - unseen, total, fam, kind)
    print(
        f"ceiling (wholly hidden shapes)  geometric {100 * ceiling['family']['geometric']:.2f}%  "
        f"overall {100 * ceiling['overall']:.2f}%",
        flush=True,
    )

    known_np, masks_np = images_u8.numpy(), masks.numpy()
    t0 = time.perf_counter()
    nearest = torch.from_numpy(nearest_fill(known_np, masks_np))
    record("nearest known pixel", to_model_range(nearest), seconds=time.perf_counter() - t0)
    t0 = time.perf_counter()
    telea = telea_fill(known_np, masks_np)
    if telea is not None:
        record(
            "OpenCV Telea (r=3)",
            to_model_range(torch.from_numpy(telea)),
            seconds=time.perf_counter() - t0,
        )

    t0 = time.perf_counter()
    one = run_model(module, truth, maskf, {"name": "onepass"}, args.batch)
    record("model, one pass at t=T-1", one, seconds=time.perf_counter() - t0)
    if module.diffusion.self_condition and args.passes > 1:
        t0 = time.perf_counter()
        refined = run_model(
            module, truth, maskf, {"name": "onepass", "passes": args.passes}, args.batch
        )
        record(f"model, {args.passes} passes at t=T-1", refined, seconds=time.perf_counter() - t0)

    def subset(n: int | None) -> torch.Tensor:
        # the first n patterns under every mask kind
        n = args.eval_n if n is None else min(n, args.eval_n)
        return (torch.arange(len(KINDS))[:, None] * args.eval_n + torch.arange(n)[None]).flatten()

    if args.ddim_steps > 0:
        s = subset(args.ddim_n)
        t0 = time.perf_counter()
        ddim = run_model(
            module,
            truth[s],
            maskf[s],
            {"name": "ddim", "steps": args.ddim_steps, "eta": 0.0},
            args.batch,
        )
        record(f"model, DDIM-{args.ddim_steps}", ddim, s, time.perf_counter() - t0)
        if args.ddim_n is not None and args.ddim_n < args.eval_n:
            record("model, one pass (DDIM subset)", one[s], s)
    if args.repaint_n > 0:
        s = subset(args.repaint_n)
        rp = {"name": "repaint", "steps": args.repaint_steps, "jump_length": 10, "resamples": 10}
        t0 = time.perf_counter()
        repaint = run_model(module, truth[s], maskf[s], rp, args.batch)
        record(
            f"model, RePaint-{args.repaint_steps} (j=10, r=10)",
            repaint,
            s,
            time.perf_counter() - t0,
        )
        record("model, one pass (RePaint subset)", one[s], s)

    # panel: one pattern per family under a rotating mask kind
    rows = []
    for i, _ in enumerate(FAMILIES):
        hits = ((fam == i) & (kind == i % len(KINDS))).nonzero()
        hits = hits if len(hits) else (fam == i).nonzero()
        if len(hits):
            rows.append(int(hits[0]))
    rows = torch.tensor(rows)
    cols = [truth[rows], masked_input(truth[rows], maskf[rows]), mask_as_image(maskf[rows])]
    names = ["original", "masked input", "mask"]
    for name, (res, s) in filled.items():
        if len(s) == len(truth) and "subset" not in name:
            cols.append(res[rows])
            names.append(name)
    big = F.interpolate(
        panel_rows(cols), scale_factor=3, mode="nearest"
    )  # 32 px is too small to see
    save_image(big, out / "panel.png", nrow=len(cols), padding=2, pad_value=1.0)
    md = table({"ceiling: shapes wholly under the mask are invisible": ceiling, **results}, KINDS)
    (out / "table.md").write_text(md)
    report = {
        "results": results,
        "ceiling": ceiling,
        "seconds": timing,
        "panel_columns": names,
        "ckpt": str(ckpt),
        "eval_n": args.eval_n,
        "held_out_seed": HELD_OUT_SEED,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(md)
    print(f"panel columns: {names}")
    print(f"wrote {out}/table.md, results.json, panel.png")
    return report


if __name__ == "__main__":
    main()
