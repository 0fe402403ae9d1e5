"""The comparison report: runs -> comparison.md (+ comparison.json) and PNG plots.

A run is a training run directory (config.yaml, metrics.json, tensorboard/, samples/final.png,
.hydra/ when Hydra made it). Runs are grouped by the keys that differ between them (swept
config groups and overrides, from .hydra/; else the differing resolved-config values), seeds
excluded, and each group gets mean ± std over its finished runs.
"""

import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from diffusion_lab.errors import require
from diffusion_lab.metrics import EVAL_SCALARS

BUCKET = re.compile(r"^(train|val)/loss_t(\d+)-(\d+)$")
STANDARD_KEYS = {
    "train/loss",
    "train/loss_step",
    "train/loss_epoch",
    "val/loss",
    "params",
    "mflops_per_image",
    "train_images_per_sec",
    "sample_seconds_per_image",
    "global_step",
    "epochs",
    "best_checkpoint",
    "last_checkpoint",
    "status",
    "error",
    "traceback",
}
SEED_KEYS = {"seed", "data.seed"}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


# ---- reading runs -----------------------------------------------------------------------------
@dataclass
class Run:
    path: Path
    status: str  # "ok", "failed" (the job raised), "incomplete" (no metrics.json: killed/running)
    error: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # flattened resolved config
    descriptor: dict[str, str] = field(
        default_factory=dict
    )  # what was chosen: group choices + overrides
    metrics: dict[str, Any] = field(default_factory=dict)
    scalars: dict[str, list[float]] = field(default_factory=dict)  # tag -> values in order
    group: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seed(self) -> Any:
        return self.descriptor.get("seed", self.config.get("seed"))

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def is_run_dir(path: Path) -> bool:
    return any((path / n).exists() for n in ("config.yaml", "metrics.json", ".hydra"))


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Each path is a run directory or a folder of them (a Hydra multirun directory)."""
    require(len(paths) > 0, "give a multirun directory or one or more run directories")
    runs: list[Path] = []
    for p in map(Path, paths):
        require(p.is_dir(), f"{p} is not a directory")
        if is_run_dir(p) and not (p / "multirun.yaml").exists():
            runs.append(p)
            continue
        children = [c for c in p.iterdir() if c.is_dir() and is_run_dir(c)]
        # Hydra numbers jobs 0, 1, ..., 10: sort numerically where the names are numbers
        children.sort(key=lambda c: (0, int(c.name), "") if c.name.isdigit() else (1, 0, c.name))
        require(children, f"{p} holds no run directories (config.yaml, metrics.json or .hydra/)")
        runs.extend(children)
    return runs


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def read_descriptor(path: Path) -> dict[str, str] | None:
    """Config-group choices and command-line overrides of a Hydra job (None without .hydra/)."""
    hydra_dir = path / ".hydra"
    if not (hydra_dir / "overrides.yaml").exists():
        # hydra.output_subdir is .hydra/<start time>: the first invocation made the run's config
        subdirs = sorted(p for p in hydra_dir.glob("*") if (p / "overrides.yaml").exists())
        hydra_dir = subdirs[0] if subdirs else hydra_dir
    overrides = _yaml(hydra_dir / "overrides.yaml")
    hydra_cfg = _yaml(hydra_dir / "hydra.yaml")
    if overrides is None and hydra_cfg is None:
        return None
    out: dict[str, str] = {}
    choices = ((hydra_cfg or {}).get("hydra", {}).get("runtime", {}) or {}).get("choices", {})
    for group, choice in (choices or {}).items():
        if not group.startswith("hydra/") and choice is not None:
            out[group] = str(choice)
    for item in overrides or []:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if not key.startswith("hydra."):
            out[key] = value
    return out


def read_scalars(tb_dir: Path) -> dict[str, list[float]]:
    """TensorBoard scalars: tag -> values in logging order."""
    if not tb_dir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 1})
    try:
        acc.Reload()
    except Exception:  # a truncated event file (killed run) should not stop the report
        return {}
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags().get("scalars", [])}


def read_run(path: Path) -> Run:
    config = _yaml(path / "config.yaml") or _yaml(path / ".hydra" / "config.yaml") or {}
    metrics: dict[str, Any] = {}
    status, error = "incomplete", "no metrics.json (the job was killed or is still running)"
    if (path / "metrics.json").is_file():
        try:
            metrics = json.loads((path / "metrics.json").read_text())
            status = metrics.get("status", "ok")
            error = metrics.get("error") if status != "ok" else None
        except (OSError, json.JSONDecodeError) as e:
            status, error = "failed", f"unreadable metrics.json ({type(e).__name__})"
    # `python -m diffusion_lab.evaluate` results: eval.json, eval_<tag>.json -> eval/fid, ...
    for extra in sorted(path.glob("eval*.json")):
        try:
            data = json.loads(extra.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            for k in EVAL_SCALARS:
                if _number(data.get(k)) is not None:
                    metrics.setdefault(f"{extra.stem}/{k}", data[k])
    run = Run(path=path, status=status, error=error, config=flatten(config), metrics=metrics)
    run.descriptor = read_descriptor(path) or {}
    run.scalars = read_scalars(path / "tensorboard")
    return run


# ---- grouping ---------------------------------------------------------------------------------
def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Keys whose value differs between runs (seeds and per-run paths excluded)."""
    use_descriptor = all(r.descriptor for r in runs)
    table = [r.descriptor if use_descriptor else r.config for r in runs]
    keys: list[str] = []
    for table_keys in table:
        keys.extend(k for k in table_keys if k not in keys)
    out = []
    for k in keys:
        if k in SEED_KEYS or k.endswith(".seed") or k.startswith("paths."):
            continue
        values = [str(t.get(k, "—")) for t in table]
        if len(set(values)) < 2:
            continue
        # a value that names its own run directory (output paths) is not a swept setting
        if any(str(r.path) in v for r, v in zip(runs, values)):
            continue
        out.append(k)
    return out


def short_value(value: Any) -> str:
    """Sweeper floats such as 0.00019182157424526137 as 0.0001918."""
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:.4g}" if len(text) > 8 and not text.isdigit() else text


def short_group_names(
    runs: Sequence[Run], groups: Sequence[str], keys: Sequence[str], max_chars: int = 48
) -> dict[str, list[str]]:
    """Where the group labels are too long to read in a table cell or under a bar (many
    settings differ), rename the groups `config 1`, `config 2`, ... and return each new
    name's values of `keys`, for a table that spells them out; {} when the labels are short."""
    if len(keys) <= 3 and all(len(g) <= max_chars for g in groups):
        return {}
    names = {g: f"config {i + 1}" for i, g in enumerate(groups)}
    values: dict[str, list[str]] = {}
    for r in runs:
        source = r.descriptor if all(x.descriptor for x in runs) else r.config
        r.group = names[r.group]
        values.setdefault(r.group, [short_value(source.get(k, "—")) for k in keys])
    return values


def assign_groups(runs: Sequence[Run], keys: Sequence[str]) -> list[str]:
    """Group labels in first-appearance order; each run's `group` is set."""
    labels: list[str] = []
    for r in runs:
        source = r.descriptor if all(x.descriptor for x in runs) else r.config
        r.group = ", ".join(f"{k}={short_value(source.get(k, '—'))}" for k in keys) or "all runs"
        if r.group not in labels:
            labels.append(r.group)
    return labels


# ---- numbers ----------------------------------------------------------------------------------
def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def bucket_keys(metrics: dict[str, Any], stage: str = "val") -> list[str]:
    """`{stage}/loss_t{lo}-{hi}` keys ordered by lo."""
    found = [
        (int(m.group(2)), k) for k in metrics if (m := BUCKET.match(k)) and m.group(1) == stage
    ]
    return [k for _, k in sorted(found)]


@dataclass
class Column:
    title: str
    get: Any  # Run -> float | None
    fmt: str


def _metric(key: str, scale: float = 1.0):
    def get(r: Run) -> float | None:
        v = _number(r.metrics.get(key))
        return v * scale if v is not None else None

    return get


def _bucket(i: int):
    def get(r: Run) -> float | None:
        keys = bucket_keys(r.metrics)
        return _number(r.metrics[keys[i]]) if i < len(keys) else None

    return get


def columns(runs: Sequence[Run]) -> list[Column]:
    cols = [
        Column("params", _metric("params"), "{:,.0f}"),
        Column("MFLOPs/img", _metric("mflops_per_image"), "{:.1f}"),
        Column("train img/s", _metric("train_images_per_sec"), "{:.1f}"),
        Column("train loss", _metric("train/loss"), "{:#.4g}"),
        Column("val loss", _metric("val/loss"), "{:#.4g}"),
    ]
    n_buckets = max((len(bucket_keys(r.metrics)) for r in runs), default=0)
    for i in range(n_buckets):
        cols.append(Column(f"val loss q{i + 1}", _bucket(i), "{:#.4g}"))
    cols.append(Column("sample ms/img", _metric("sample_seconds_per_image", 1000.0), "{:.1f}"))
    extra: list[str] = []
    for r in runs:
        for k, v in r.metrics.items():
            if (
                k not in STANDARD_KEYS
                and not k.startswith("lr-")  # LearningRateMonitor's last value
                and not BUCKET.match(k)
                and _number(v) is not None
                and k not in extra
            ):
                extra.append(k)
    cols.extend(Column(k, _metric(k), "{:#.4g}") for k in extra)
    return cols


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else spec.format(value)


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def fmt_mean_std(values: Iterable[float | None], spec: str) -> str:
    mean, std, _ = mean_std(values)
    if mean is None:
        return "—"
    return fmt(mean, spec) + (f" ± {spec.format(std)}" if std else "")  # no "± 0" for params


def md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


# ---- plots ------------------------------------------------------------------------------------
def _stack(series: list[list[float]]) -> np.ndarray | None:
    series = [s for s in series if s]
    if not series:
        return None
    n = min(len(s) for s in series)  # epochs all runs of the group reached
    return np.array([s[:n] for s in series])


def _band(ax, values: np.ndarray, color: str, label: str) -> None:
    x = np.arange(1, values.shape[1] + 1)
    mean = values.mean(0)
    ax.plot(x, mean, color=color, label=label, marker="o" if len(x) < 15 else None, ms=3)
    if len(values) > 1:
        std = values.std(0, ddof=1)
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, lw=0)


def _wrap(group: str) -> str:
    return group.replace(", ", "\n")


def _scale(ax, values: list[float]) -> None:
    """Log y only where the curves span more than a factor of 3 (else the ticks are unreadable)."""
    values = [v for v in values if v > 0]
    if values and max(values) / min(values) > 3:
        ax.set_yscale("log")


def _by_group(runs: Sequence[Run], groups: Sequence[str]) -> list[tuple[str, str, list[Run]]]:
    out = []
    for i, g in enumerate(groups):
        members = [r for r in runs if r.group == g and r.ok]
        out.append((g, COLORS[i % len(COLORS)], members))
    return out


def _legend(fig: Figure, ax) -> None:
    """One legend for the figure, below the plots, so long group names never cover a curve."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(
            handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize=8
        )


def plot_loss_curves(runs: Sequence[Run], groups: Sequence[str], path: Path) -> Path:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, tag, title in (
        (axes[0], "train/loss_epoch", "train loss (epoch mean)"),
        (axes[1], "val/loss", "validation loss"),
    ):
        seen: list[float] = []
        for g, color, members in _by_group(runs, groups):
            values = _stack([r.scalars.get(tag, []) for r in members])
            if values is not None:
                _band(ax, values, color, f"{g} (n={len(values)})")
                seen.extend(values.ravel().tolist())
        ax.set_title(title)
        ax.set_xlabel("epoch")
        _scale(ax, seen)
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes[0])
    fig.suptitle("Loss curves (mean ± std over seeds)")
    fig.savefig(path, dpi=100)
    return path


def plot_bucket_curves(runs: Sequence[Run], groups: Sequence[str], path: Path) -> Path:
    ok = [r for r in runs if r.ok]
    n_buckets = max((len(bucket_keys(r.metrics)) for r in ok), default=0) or 4
    fig = Figure(figsize=(3.2 * n_buckets, 3.6), layout="constrained")
    axes = fig.subplots(1, n_buckets, squeeze=False)[0]
    for i, ax in enumerate(axes):
        ranges = set()
        seen: list[float] = []
        for g, color, members in _by_group(runs, groups):
            series = []
            for r in members:
                keys = bucket_keys(r.metrics)
                if i < len(keys):
                    ranges.add(keys[i].split("_t", 1)[1])
                    series.append(r.scalars.get(keys[i], []))
            values = _stack(series)
            if values is not None:
                _band(ax, values, color, g)
                seen.extend(values.ravel().tolist())
        ax.set_title(
            f"val loss, t in {' / '.join(sorted(ranges)) or f'quarter {i + 1}'}", fontsize=9
        )
        ax.set_xlabel("epoch")
        _scale(ax, seen)
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes[0])
    fig.suptitle("Validation loss per timestep range (low t = little noise)")
    fig.savefig(path, dpi=100)
    return path


def plot_metric_bars(
    runs: Sequence[Run], groups: Sequence[str], key: str, path: Path, better: str = "lower"
) -> Path:
    fig = Figure(figsize=(max(5.0, 1.6 * len(groups) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (_, color, members) in enumerate(_by_group(runs, groups)):
        vals = [v for r in members if (v := _number(r.metrics.get(key))) is not None]
        if vals:
            ax.bar(
                i,
                np.mean(vals),
                color=color,
                alpha=0.75,
                yerr=np.std(vals, ddof=1) if len(vals) > 1 else None,
                capsize=6,
            )
            ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
        else:
            ax.text(i, 0, "no finished run", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(groups)), [_wrap(g) for g in groups], fontsize=8)
    ax.set_ylabel(key)
    ax.set_title(f"{key} ({better} is better; bars: mean ± std, dots: runs)")
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=100)
    return path


def plot_sample_grids(runs: Sequence[Run], groups: Sequence[str], path: Path) -> Path:
    from PIL import Image

    panels = []
    for g, _, members in _by_group(runs, groups):
        png = next(
            (
                r.path / "samples" / "final.png"
                for r in members
                if (r.path / "samples" / "final.png").is_file()
            ),
            None,
        )
        seed = next((r.seed for r in members if (r.path / "samples" / "final.png").is_file()), None)
        panels.append((g, seed, np.asarray(Image.open(png).convert("RGB")) if png else None))
    k = len(panels)
    fig = Figure(figsize=(4.2 * k, 4.6), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False)[0]
    for ax, (g, seed, image) in zip(axes, panels):
        ax.set_xticks([])
        ax.set_yticks([])
        if image is None:
            ax.text(0.5, 0.5, "no samples/final.png", ha="center", va="center")
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_title(_wrap(g) + (f"\n(seed {seed})" if seed is not None else ""), fontsize=9)
    fig.suptitle("Final samples (same sampler seed)")
    fig.savefig(path, dpi=100)
    return path


# ---- the report -------------------------------------------------------------------------------
def compare(paths: Sequence[str | Path], out_dir: str | Path, metric: str | None = None) -> Path:
    """Read the runs under `paths`, write comparison.md, comparison.json and the plots to
    `out_dir`; returns the path of comparison.md."""
    runs = [read_run(p) for p in find_run_dirs(paths)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = swept_keys(runs)
    groups = assign_groups(runs, keys)
    settings = short_group_names(runs, groups, keys)
    groups = list(settings) if settings else groups
    cols = columns(runs)
    ok = [r for r in runs if r.ok]
    metric = metric or next(
        (r.config.get("optimized_metric") for r in runs if r.config.get("optimized_metric")),
        "val/loss",
    )

    grouped_rows = []
    for g in groups:
        members = [r for r in runs if r.group == g]
        done = [r for r in members if r.ok]
        grouped_rows.append(
            [g, f"{len(done)}/{len(members)}"]
            + [fmt_mean_std((c.get(r) for r in done), c.fmt) for c in cols]
        )
    run_rows = []
    for r in runs:
        cells = [fmt(c.get(r), c.fmt) if r.ok else "" for c in cols]
        status = r.status if r.ok else f"**{r.status}**: {r.error or ''}"
        run_rows.append(
            [r.name, r.group, str(r.seed if r.seed is not None else "—"), status] + cells
        )

    plots = {}
    if ok:
        plots["loss curves"] = plot_loss_curves(runs, groups, out / "loss_curves.png")
        plots["loss per timestep range"] = plot_bucket_curves(
            runs, groups, out / "timestep_loss.png"
        )
        plots[metric] = plot_metric_bars(runs, groups, metric, out / "main_metric.png")
        plots["final samples"] = plot_sample_grids(runs, groups, out / "samples.png")

    failed = [r for r in runs if not r.ok]
    bucket_note = ""
    ranges = sorted({", ".join(k.split("_t", 1)[1] for k in bucket_keys(r.metrics)) for r in ok})
    if ranges:
        bucket_note = (
            "`val loss q1..q4`: validation loss on the four equal timestep ranges "
            f"(t = {' | '.join(ranges)}); q1 is the least noisy.\n"
        )
    lines = [
        "# Comparison",
        "",
        f"{len(runs)} runs ({len(ok)} finished, {len(failed)} failed or incomplete) from "
        + ", ".join(f"`{p}`" for p in paths)
        + ".",
        f"Grouped by: {', '.join(f'`{k}`' for k in keys) or '(nothing differs between the runs)'}; "
        "numbers are mean ± std over the finished runs of a group (seeds).",
        "",
        "## By configuration",
        "",
        md_table(["group", "runs ok"] + [c.title for c in cols], grouped_rows),
        "",
    ]
    if settings:  # many differing settings: short names in the tables and plots, spelled out here
        lines += [
            "## Configurations",
            "",
            md_table(["group"] + [f"`{k}`" for k in keys], [[g, *v] for g, v in settings.items()]),
            "",
        ]
    lines += [
        "## Runs",
        "",
        md_table(["run", "group", "seed", "status"] + [c.title for c in cols], run_rows),
        "",
        bucket_note
        + "`sample ms/img`: wall time of the final sample grid divided by its size, with the "
        "run's sampler (`sampler.name`, `sampler.steps`); `train img/s` excludes validation.",
        "",
    ]
    for p in map(Path, paths):
        best = _yaml(p / "optimization_results.yaml")  # written by Hydra's Optuna sweeper
        if isinstance(best, dict) and "best_value" in best:
            params = ", ".join(f"`{k}={short_value(v)}`" for k, v in best["best_params"].items())
            lines += [f"Optuna best in `{p}`: {best['best_value']:#.4g} with {params}.", ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({p.name})" for name, p in plots.items()]
        lines.append("")
    md = out / "comparison.md"
    md.write_text("\n".join(lines))
    summary = {
        "swept_keys": keys,
        "metric": metric,
        "groups": {g: [str(r.path) for r in runs if r.group == g] for g in groups},
        "runs": [
            {
                "path": str(r.path),
                "group": r.group,
                "seed": r.seed,
                "status": r.status,
                "error": r.error,
                **{c.title: c.get(r) for c in cols},
            }
            for r in runs
        ],
    }
    (out / "comparison.json").write_text(json.dumps(summary, indent=2, default=str))
    return md
