"""python -m diffusion_lab.compare <multirun dir | run dirs...>: the comparison report.

    python -m diffusion_lab.train -m model=basic_unet,efficient_unet seed=1,2,3
    python -m diffusion_lab.compare outputs/train/multiruns/<time>

Writes comparison.md (per configuration: mean ± std over seeds; per run; failed runs marked),
comparison.json and loss_curves.png, timestep_loss.png, main_metric.png, samples.png. Paths,
not config, are its input, so it is a plain argparse tool rather than a Hydra app.
"""

import argparse
import sys
from datetime import datetime
from pathlib import Path

from diffusion_lab.errors import UserError


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m diffusion_lab.compare", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("paths", nargs="+", help="a Hydra multirun directory or run directories")
    p.add_argument(
        "--out",
        "--output-dir",
        dest="out",
        default=None,
        help="where to write the report (default: the multirun directory when one is given, "
        "else outputs/compare/runs/<time>)",
    )
    p.add_argument("--metric", default=None, help="bar-chart metric (default: optimized_metric)")
    args = p.parse_args(argv)
    from diffusion_lab.figures.report import compare, find_run_dirs

    try:
        out = args.out
        if out is None:
            single = len(args.paths) == 1 and find_run_dirs(args.paths) != [Path(args.paths[0])]
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            out = args.paths[0] if single else f"outputs/compare/runs/{stamp}"
        md = compare(args.paths, out, metric=args.metric)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(md)


if __name__ == "__main__":
    main()
