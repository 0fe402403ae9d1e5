"""A 2x2 multirun (model x seed) with tiny settings, then the comparison report over it."""

import json
import shutil
import statistics

import numpy as np
import pytest
from PIL import Image

from diffusion_lab.app.hydra_entry import _record_failure
from diffusion_lab.compare import main as compare_main
from diffusion_lab.figures.report import compare

from .conftest import TINY_PATTERNS, compose_cfg, run_module


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("multirun")
    res = run_module(
        "train",
        "-m",
        "model=basic_unet,efficient_unet",
        "seed=1,2",
        *TINY_PATTERNS,
        "trainer.max_epochs=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return sweep


def table(md: str, heading: str) -> list[dict[str, str]]:
    """The markdown table under `## heading` as a list of {column: cell}."""
    block = md.split(f"## {heading}\n", 1)[1].strip().split("\n\n", 1)[0].splitlines()
    header = [c.strip() for c in block[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in row.strip("|").split("|")))) for row in block[2:]]


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


# report column -> (metrics.json key, scale)
COLUMNS = {
    "params": ("params", 1),
    "MFLOPs/img": ("mflops_per_image", 1),
    "train img/s": ("train_images_per_sec", 1),
    "train loss": ("train/loss", 1),
    "val loss": ("val/loss", 1),
    "val loss q1": ("val/loss_t0-249", 1),
    "val loss q4": ("val/loss_t750-999", 1),
    "sample ms/img": ("sample_seconds_per_image", 1000),
}


def test_multirun_report_matches_each_runs_metrics(multirun, tmp_path):
    jobs = sorted(p.name for p in multirun.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]  # one numbered directory per job
    metrics = {j: json.loads((multirun / j / "metrics.json").read_text()) for j in jobs}

    md_path = compare([multirun], tmp_path)
    md = md_path.read_text()
    assert "Grouped by: `model`" in md
    runs = {row["run"]: row for row in table(md, "Runs")}
    assert set(runs) == set(jobs)
    for job, row in runs.items():
        assert row["status"] == "ok"
        assert row["seed"] == ("1" if job in ("0", "2") else "2")  # Hydra's job order
        for column, (key, scale) in COLUMNS.items():
            expected = metrics[job][key] * scale
            assert number(row[column]) == pytest.approx(expected, rel=2e-3, abs=0.06), column

    groups = {row["group"]: row for row in table(md, "By configuration")}
    assert set(groups) == {"model=basic_unet", "model=efficient_unet"}
    for name, members in (("model=basic_unet", ["0", "1"]), ("model=efficient_unet", ["2", "3"])):
        row = groups[name]
        assert row["runs ok"] == "2/2"
        mean, std = (number(x) for x in row["val loss"].split(" ± "))
        values = [metrics[j]["val/loss"] for j in members]
        assert mean == pytest.approx(statistics.fmean(values), rel=2e-3)
        assert std == pytest.approx(statistics.stdev(values), rel=2e-3, abs=1e-4)
    # the efficient U-Net has a middle conv: more parameters at these tiny widths
    assert number(groups["model=efficient_unet"]["params"].split(" ± ")[0]) > number(
        groups["model=basic_unet"]["params"].split(" ± ")[0]
    )

    summary = json.loads((tmp_path / "comparison.json").read_text())
    assert summary["swept_keys"] == ["model"]
    for name in ("loss_curves.png", "timestep_loss.png", "main_metric.png", "samples.png"):
        image = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 10, name
        assert f"]({name})" in md


def test_failed_and_killed_runs_are_reported_and_the_table_still_written(multirun, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(multirun, sweep)
    # job 1 crashed: what cli.run_task leaves in a multirun job directory
    cfg = compose_cfg(sweep / "1", [])
    _record_failure(cfg, RuntimeError("CUDA out of memory"))
    (sweep / "3" / "metrics.json").unlink()  # job 3 was killed before it finished

    compare_main([str(sweep)])  # writes into the multirun directory by default
    md = (sweep / "comparison.md").read_text()
    assert "4 runs (2 finished, 2 failed or incomplete)" in md
    runs = {row["run"]: row for row in table(md, "Runs")}
    assert runs["1"]["status"] == "**failed**: RuntimeError: CUDA out of memory"
    assert runs["3"]["status"].startswith("**incomplete**: no metrics.json")
    assert runs["1"]["val loss"] == "" and runs["0"]["val loss"] != ""
    groups = {row["group"]: row for row in table(md, "By configuration")}
    assert groups["model=basic_unet"]["runs ok"] == "1/2"
    assert " ± " not in groups["model=basic_unet"]["val loss"]  # one finished run: no std
    ok = json.loads((sweep / "0" / "metrics.json").read_text())["val/loss"]
    assert number(groups["model=basic_unet"]["val loss"]) == pytest.approx(ok, rel=2e-3)


def test_compare_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        compare_main([str(tmp_path)])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path} holds no run directories (config.yaml, metrics.json or .hydra/)"
    )


def test_evaluation_results_become_comparison_columns(multirun, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(multirun, sweep)
    # what `python -m diffusion_lab.evaluate` writes into a run directory
    (sweep / "0" / "eval.json").write_text(
        json.dumps({"fid": 12.5, "accuracy": 0.75, "n_samples": 100, "classifier": {"a": 1}})
    )
    (sweep / "2" / "eval_ddim10.json").write_text(json.dumps({"fid": 30.25}))
    md = compare([sweep], tmp_path).read_text()
    runs = {row["run"]: row for row in table(md, "Runs")}
    assert number(runs["0"]["eval/fid"]) == 12.5 and number(runs["0"]["eval/accuracy"]) == 0.75
    assert runs["1"]["eval/fid"] == "—"
    assert number(runs["2"]["eval_ddim10/fid"]) == 30.25
    assert "eval/n_samples" not in runs["0"]  # bookkeeping, not a score


def test_runs_that_differ_in_many_settings_get_short_names_and_a_settings_table(tmp_path):
    """Runs outside a sweep (no .hydra/ overrides) that differ in many resolved settings: the
    tables and plots name them config 1, 2, ...; one table spells the settings out."""
    import warnings

    for i, (lr, width, steps, t) in enumerate([(1e-3, 8, 10, 300), (3e-4, 16, 20, 1000)]):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "config.yaml").write_text(
            f"optimizer: {{lr: {lr}}}\nmodel: {{base: {width}, mults: [1, {i + 2}]}}\n"
            f"sampler: {{steps: {steps}}}\nschedule: {{timesteps: {t}}}\nseed: 1\n"
        )
        (run / "metrics.json").write_text(json.dumps({"val/loss": 0.3 - 0.1 * i}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no matplotlib layout warnings either
        md = compare([tmp_path / "run0", tmp_path / "run1"], tmp_path / "out").read_text()
    groups = [row["group"] for row in table(md, "By configuration")]
    assert groups == ["config 1", "config 2"]
    settings = {row["group"]: row for row in table(md, "Configurations")}
    assert settings["config 2"]["`optimizer.lr`"] == "0.0003"
    assert settings["config 1"]["`schedule.timesteps`"] == "300"
