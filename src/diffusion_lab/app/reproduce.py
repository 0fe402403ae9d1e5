"""`python -m diffusion_lab.reproduce experiment=NAME [epochs=N]`: train an experiment as its
source set-up describes (all its epochs, or the first N) and set every figure the source
reported beside this run's, with a verdict.

The reported figures live in conf/reference/<experiment>.yaml (or `reference_file=PATH`):

    source: what the numbers come from
    hardware: where they were measured
    figures:
      params:     {what: ..., value: 678961, tolerance: 0}              # absolute
      train_loss: {what: ..., per_epoch: {1: 0.2066, ...}, rel_tolerance: 0.05}
      clip_share: {what: ..., value: 0.75, not_checked: "why this machine cannot"}

Figures measured here: `params` (the denoiser's parameter count) and `train_loss` (per epoch);
`measure: params` lets a figure of another name compare against one of them.

A figure is PASS when |run - reference| <= tolerance (or rel_tolerance * |reference|), else
FAIL; one this command cannot measure here is "not checked here: <reason>", never PASS.
Writes reproduce.json, reproduce.md and reproduce.png (both loss curves) into the run directory.
"""

import json
import logging
import math
import platform
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion_lab.app.config import config_dir
from diffusion_lab.app.hydra_entry import hydra_entry, run_task
from diffusion_lab.app.train import train
from diffusion_lab.errors import UserError, require
from diffusion_lab.training.callbacks import write_json

log = logging.getLogger("diffusion_lab")

PASS, FAIL, NOT_CHECKED = "PASS", "FAIL", "not checked here"
EPOCH_LOSSES = "epoch_losses.json"


class EpochLosses(pl.Callback):
    """Per-epoch mean of the training loss over the epoch's optimizer steps (the per-epoch
    "average loss" the write-ups report), plus the per-timestep-bucket means the module logs,
    written to `path` after every epoch."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.epochs: list[dict[str, Any]] = []
        self._sum: torch.Tensor | None = None
        self._count = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the module logs its bucket means after the callbacks' epoch-end hooks
        self._take_buckets(trainer)
        self._sum, self._count = None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float()  # a device tensor: no host sync per step
        self._sum = loss if self._sum is None else self._sum + loss
        self._count += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._count:
            mean = float(self._sum) / self._count
            self.epochs.append(
                {"epoch": trainer.current_epoch + 1, "train_loss": mean, "steps": self._count}
            )
            self._write()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_buckets(trainer)

    def _take_buckets(self, trainer: pl.Trainer) -> None:
        if not self.epochs or "buckets" in self.epochs[-1]:
            return
        self.epochs[-1]["buckets"] = {
            k.removeprefix("train/loss_"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/loss_t")
        }
        self._write()

    def _write(self) -> None:
        write_json(self.path, {"epochs": self.epochs})


def reference_path(cfg: DictConfig) -> Path:
    explicit = cfg.get("reference_file")
    path = Path(explicit) if explicit else config_dir() / "reference" / f"{cfg.task_name}.yaml"
    require(
        path.is_file(),
        f"no reference figures for {cfg.task_name!r} ({path}); choose experiment=NAME with a "
        f"file in conf/reference/, or set reference_file=PATH",
    )
    return path


def load_reference(path: Path) -> dict[str, Any]:
    try:
        ref = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"reference_file={path} is not valid YAML: {e}") from None
    require(
        isinstance(ref, dict) and isinstance(ref.get("figures"), dict),
        f"reference_file={path} has no `figures:` mapping",
    )
    return ref


def hardware() -> str:
    """This machine in one line: the CPU model (and GPU when one is used)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}{gpu}, torch {torch.__version__}"


def _within(run: float, ref: float, fig: dict[str, Any]) -> tuple[bool, str]:
    if "rel_tolerance" in fig:
        tol = float(fig["rel_tolerance"]) * abs(ref)
        text = f"±{100 * float(fig['rel_tolerance']):g}%"
    else:
        tol = float(fig.get("tolerance", 0))
        text = f"±{tol:g}"
    return math.isfinite(run) and abs(run - ref) <= tol, text


def _row(name: str, ref: Any, run: Any, verdict: str, tol: str = "", note: str = "") -> dict:
    return {"figure": name, "reference": ref, "run": run, "tolerance": tol, "verdict": verdict,
            "note": note}  # fmt: skip


def compare(reference: dict[str, Any], measured: dict[str, Any], epochs_run: int) -> list[dict]:
    """One row per reported figure (one per epoch for a curve) with PASS / FAIL / not checked."""
    rows = []
    for name, fig in reference["figures"].items():
        fig = dict(fig)
        reason = fig.get("not_checked")
        if "per_epoch" in fig:
            curve = {int(k): float(v) for k, v in fig["per_epoch"].items()}
            run_curve = measured.get(fig.get("measure", name), {})
            if reason:
                rows.append(_row(name, curve, None, f"{NOT_CHECKED}: {reason}"))
                continue
            later = sorted(e for e in curve if e > epochs_run)
            for epoch in sorted(e for e in curve if e <= epochs_run):
                run = run_curve.get(epoch)
                if run is None:
                    rows.append(_row(f"{name} epoch {epoch}", curve[epoch], None, FAIL,
                                     note="the run recorded no value"))  # fmt: skip
                    continue
                ok, tol = _within(run, curve[epoch], fig)
                rel = (run - curve[epoch]) / curve[epoch] if curve[epoch] else float("nan")
                rows.append(_row(f"{name} epoch {epoch}", curve[epoch], run, PASS if ok else FAIL,
                                 tol, f"{100 * rel:+.1f}%"))  # fmt: skip
            if later:
                rows.append(
                    _row(f"{name} epochs {later[0]}-{later[-1]}", None, None,
                         f"{NOT_CHECKED}: this run trained {epochs_run} epochs (epochs=N)")
                )  # fmt: skip
            continue
        ref = fig.get("value")
        if reason:
            rows.append(_row(name, ref, None, f"{NOT_CHECKED}: {reason}"))
            continue
        run = measured.get(fig.get("measure", name))
        if run is None:
            rows.append(_row(name, ref, None, f"{NOT_CHECKED}: this command does not measure it"))
            continue
        ok, tol = _within(float(run), float(ref), fig)
        rows.append(_row(name, ref, run, PASS if ok else FAIL, tol))
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, dict):
        return f"{len(v)} epochs"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# reproduce {report['experiment']}",
        "",
        f"- reference: {report['source']} (hardware: {report['reference_hardware']})",
        f"- this run: {report['epochs_run']} epochs on {report['hardware']}, "
        f"precision {report['precision']}, {report['date']}",
        f"- run directory: {report['run_dir']}",
        "",
        "| figure | reference | this run | tolerance | verdict | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['figure']} | {_fmt(r['reference'])} | {_fmt(r['run'])} | {r['tolerance']} "
            f"| {r['verdict']} | {r['note']} |"
        )
    counts = {v: sum(r["verdict"].startswith(v) for r in report["rows"]) for v in (PASS, FAIL)}
    lines += ["", f"{counts[PASS]} PASS, {counts[FAIL]} FAIL, "
              f"{len(report['rows']) - counts[PASS] - counts[FAIL]} not checked here"]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(reference: dict[str, Any], epochs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ref = reference["figures"].get("train_loss", {}).get("per_epoch", {})
    if ref:
        xs = sorted(int(k) for k in ref)
        ax.plot(xs, [ref[k] if k in ref else ref[str(k)] for k in xs], "o-", ms=3,
                label="reference")  # fmt: skip
    if epochs:
        ax.plot([e["epoch"] for e in epochs], [e["train_loss"] for e in epochs], "s-", ms=4,
                label="this run")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reproduce(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured (the first `epochs` epochs when set), then compare with the reference."""
    ref_path = reference_path(cfg)
    reference = load_reference(ref_path)
    out = Path(cfg.paths.output_dir)
    epochs = cfg.get("epochs")
    with open_dict(cfg):
        if epochs is not None:
            require(isinstance(epochs, int) and epochs >= 1, f"epochs={epochs} must be >= 1")
            cfg.trainer.max_epochs = epochs
        if cfg.get("callbacks") is None:
            cfg.callbacks = {}
        cfg.callbacks.epoch_losses = {
            "_target_": f"{__name__}.EpochLosses",
            "path": str(out / EPOCH_LOSSES),
        }
    metrics = train(cfg)
    recorded = json.loads((out / EPOCH_LOSSES).read_text())["epochs"] if (
        out / EPOCH_LOSSES).is_file() else []  # fmt: skip
    measured = {
        "params": metrics.get("params"),
        "train_loss": {e["epoch"]: e["train_loss"] for e in recorded},
    }
    epochs_run = len(recorded)
    report = {
        "experiment": cfg.task_name,
        "reference_file": str(ref_path),
        "source": reference.get("source", ""),
        "reference_hardware": reference.get("hardware", "not stated"),
        "hardware": hardware(),
        "precision": str(OmegaConf.select(cfg, "trainer.precision")),
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "epochs_run": epochs_run,
        "run_dir": str(out),
        "epochs": recorded,
        "rows": compare(reference, measured, epochs_run),
    }
    write_json(out / "reproduce.json", report)
    text = markdown(report)
    (out / "reproduce.md").write_text(text)
    plot(reference, recorded, out / "reproduce.png", cfg.task_name)
    print(text)
    log.info("Report: %s (and reproduce.json, reproduce.png)", out / "reproduce.md")
    verdicts = [r["verdict"] for r in report["rows"]]
    return {
        **metrics,
        "reproduce_fail": verdicts.count(FAIL),
        "reproduce_pass": verdicts.count(PASS),
    }


@hydra_entry("reproduce")
def main(cfg: DictConfig) -> float | None:
    return run_task(reproduce, cfg)
