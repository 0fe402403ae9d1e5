"""Two-process training on the CPU (trainer=ddp_cpu): what a multi-GPU run must get right."""

import json
import signal

import pytest
import torch

from diffusion_lab.app.build import read_checkpoint

from .conftest import TINY_PATTERNS
from .test_faults import net_weights
from .test_faults import run_train as run_faults_train
from .test_reliability import run_train


@pytest.mark.slow
def test_ddp_cpu_two_processes_one_run_directory(tmp_path):
    """Two processes: one run directory, each rank its own noise, evaluation during training
    (rank 0 alone, without a cross-process sync inside the metrics) completes."""
    run_dir = tmp_path / "ddp"
    run_train(
        run_dir,
        *TINY_PATTERNS,
        "trainer=ddp_cpu",
        "data.batch_size=8",
        "callbacks=with_eval",
        "callbacks.evaluate.every_n_epochs=1",
        "callbacks.evaluate.n_samples=8",
        "callbacks.evaluate.n_real=16",
        "callbacks.evaluate.batch_size=8",
        "callbacks.evaluate.sampler.steps=2",
        "callbacks.evaluate.classifier.train_size=32",
        "callbacks.evaluate.classifier.epochs=1",
        "+callbacks.record._target_=tests.ddp_helpers.RecordStepNoise",
        f"+callbacks.record.output_dir={run_dir}",
        check=True,
    )
    t0, t1 = (json.loads((run_dir / f"rank_{r}.json").read_text()) for r in (0, 1))
    assert t0 != t1  # ranks draw different timesteps (and noise) for the same step
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "eval/fid" in metrics and "eval/accuracy" in metrics
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and len(ckpts) == 2  # last + best, written once (rank zero)
    assert (run_dir / "train_ddp_process_1.log").exists()  # rank 1 ran, in the same directory
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3


@pytest.mark.slow
def test_ddp_cpu_nan_on_one_rank_stops_every_rank_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("NAN_ON_RANK_ONE", "1")
    res = run_train(
        tmp_path / "nan",
        *TINY_PATTERNS,
        "trainer=ddp_cpu",
        "data.batch_size=8",
        "model._target_=tests.ddp_helpers.NanOnRankOne",
    )
    assert res.returncode == 2, res.stderr[-3000:]
    assert "error: training loss became nan on another process at step 0" in res.stderr


# 64 images, a global batch of 8 (4 per rank): 8 steps an epoch, 24 in all; the ranks agree on
# a stop every batch here (every 10 by default)
PREEMPTIBLE_DDP = [  # on top of test_faults' PREEMPTIBLE
    "trainer=ddp_cpu",
    "data.num_train=64",
    "data.batch_size=8",
    "callbacks.sigterm_checkpoint.ddp_check_every=1",
]


@pytest.mark.slow
def test_ddp_cpu_sigterm_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run_faults_train(whole, *PREEMPTIBLE_DDP).returncode == 0
    killed = run_faults_train(
        cut,
        *PREEMPTIBLE_DDP,
        "+callbacks.term._target_=tests.test_faults.SigtermAtStep",
        "+callbacks.term.step=6",
    )
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-3000:]
    assert read_checkpoint(cut / "checkpoints" / "last.ckpt")["global_step"] == 7
    resumed = run_faults_train(cut, *PREEMPTIBLE_DDP, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = net_weights(whole), net_weights(cut)
    assert read_checkpoint(cut / "checkpoints" / "last.ckpt")["global_step"] == 24
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
