"""Sweeps: a failing job is recorded and scored NaN without stopping the others; the Optuna
search config runs trials through Hydra's Optuna sweeper plugin."""

import json
import math

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from diffusion_lab.app.hydra_entry import run_task
from diffusion_lab.errors import UserError

from .conftest import CONF, ROOT, TINY_PATTERNS, run_module


@pytest.fixture
def hydra_job(tmp_path):
    """Make run_task see a Hydra job of the given mode, as @hydra.main would set it up."""

    def make(mode: RunMode):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = mode
            cfg.hydra.runtime.output_dir = str(tmp_path)
            cfg.hydra.runtime.cwd = str(ROOT)
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield make
    HydraConfig.instance().cfg = None


def bug(cfg):
    raise RuntimeError("boom in epoch 3")


def bad_value(cfg):
    raise UserError("optimizer.lr=-1 must be > 0")


@pytest.mark.parametrize("task, message", [(bug, "RuntimeError: boom in epoch 3"),
                                           (bad_value, "UserError: optimizer.lr=-1 must be > 0")])  # fmt: skip
def test_failed_job_in_a_multirun_is_recorded_and_scored_nan(
    task, message, hydra_job, tmp_path, caplog
):
    cfg = hydra_job(RunMode.MULTIRUN)
    assert math.isnan(run_task(task, cfg))
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"] == message
    assert "job failed" in caplog.text
    if task is bug:  # a bug keeps its traceback, in the log and in the record
        assert "Traceback" in record["traceback"] and "boom in epoch 3" in caplog.text


def test_single_run_keeps_errors_as_they_were(hydra_job, tmp_path, capsys):
    cfg = hydra_job(RunMode.RUN)
    with pytest.raises(RuntimeError, match="boom"):
        run_task(bug, cfg)  # a genuine bug: the traceback reaches the user
    with pytest.raises(SystemExit) as info:
        run_task(bad_value, cfg)
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: optimizer.lr=-1 must be > 0\n"
    assert not (tmp_path / "metrics.json").exists()


def test_successful_job_returns_the_optimized_metric(hydra_job):
    cfg = hydra_job(RunMode.MULTIRUN)
    assert run_task(lambda c: {"val/loss": 0.25, "params": 3}, cfg) == 0.25
    assert math.isnan(run_task(lambda c: {"params": 3}, cfg))  # metric missing: no crash


def test_optuna_search_runs_trials(tmp_path):
    sweep = tmp_path / "optuna"
    res = run_module(
        "train",
        "hparams_search=optuna_val_loss",
        "hydra.sweeper.n_trials=3",
        *TINY_PATTERNS,
        # a smaller width choice than the config's, through the same list-valued choice
        "model.channels=choice([8,16],[12,24])",
        f"hydra.sweep.dir={sweep}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2"]
    losses = []
    for job in jobs:
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics.get("status", "ok") == "ok"
        losses.append(metrics["val/loss"])
        cfg = yaml.safe_load((sweep / job / "config.yaml").read_text())
        assert 1e-4 <= cfg["optimizer"]["lr"] <= 3e-3
        assert cfg["model"]["channels"] in ([8, 16], [12, 24])
        assert cfg["schedule"]["name"] in ("linear", "cosine")
        assert cfg["schedule"]["timesteps"] in (300, 1000)
    lrs = {yaml.safe_load((sweep / j / "config.yaml").read_text())["optimizer"]["lr"] for j in jobs}
    assert len(lrs) == 3  # the sampler proposed a new learning rate for each trial
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna"
    assert best["best_value"] == pytest.approx(min(losses))


def test_a_relaunching_ddp_trainer_in_a_sweep_is_refused_before_it_starts(tmp_path):
    """Lightning's ddp starts its other processes by rerunning the command line; in a sweep
    each would rerun the sweep. Refused in one line (Optuna's search config is a sweep too)."""
    for args in (["-m", "seed=1,2"], ["hparams_search=optuna_val_loss"]):
        res = run_module(
            "train", *args, "trainer=ddp_cpu", "debug=fast", f"hydra.sweep.dir={tmp_path}"
        )
        assert res.returncode == 2, res.stderr[-2000:]
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith("error: trainer.strategy=ddp with trainer.devices=2 in a sweep")
        assert not any(tmp_path.iterdir())
