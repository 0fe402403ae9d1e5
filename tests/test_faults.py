"""Faults lose nothing: a full disk, SIGTERM, crafted checkpoints; and the safetensors export."""

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffusion_lab.app.build import build_net, read_checkpoint
from diffusion_lab.app.hydra_entry import run_task
from diffusion_lab.app.train import resolve_ckpt_path, train
from diffusion_lab.errors import UserError
from diffusion_lab.files import atomic_write
from diffusion_lab.sampling import DiffusionPipeline
from diffusion_lab.training import checkpoint_io
from diffusion_lab.training.export import export_safetensors

from .conftest import ROOT, TINY_PATTERNS, compose_cfg, run_module


class SigtermAtStep(pl.Callback):
    """Sends this process SIGTERM (or `signal_name`) after optimizer step `step`, as a
    scheduler would."""

    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step, self.signum = step, getattr(signal, signal_name)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def full_disk(obj, f) -> None:
    f.write(b"PK\x03\x04 the first bytes")
    raise OSError(errno.ENOSPC, "No space left on device")


# ---- atomic writes ---------------------------------------------------------------------------
def test_atomic_write_keeps_the_previous_file_on_any_failure(tmp_path):
    path = tmp_path / "out" / "a.json"
    with atomic_write(path, "w") as f:
        f.write("old")
    with pytest.raises(UserError) as e, atomic_write(path) as f:
        full_disk(None, f)
    msg = str(e.value)
    assert msg.startswith(f"cannot write {path}: no space left on device (")
    assert "free there" in msg and "\n" not in msg
    with pytest.raises(RuntimeError), atomic_write(path, "w") as f:  # a failing writer
        f.write("half")
        raise RuntimeError("boom")
    with pytest.raises(OSError) as e, atomic_write(path, "w") as f:  # not the user's to fix
        raise OSError(errno.EIO, "I/O error")
    assert not isinstance(e.value, UserError)
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temporary file left


def test_full_disk_during_a_checkpoint_write_is_one_line_and_last_ckpt_resumes(
    tmp_path, capsys, monkeypatch
):
    train(compose_cfg(tmp_path, ["trainer.max_epochs=1"], tiny=True))
    ckpts = tmp_path / "checkpoints"
    before = (ckpts / "last.ckpt").read_bytes()
    monkeypatch.setattr(checkpoint_io, "torch", SimpleNamespace(save=full_disk))
    cfg = compose_cfg(tmp_path, ["trainer.max_epochs=2", "ckpt_path=last"], tiny=True)
    with pytest.raises(SystemExit) as e:
        run_task(train, cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: cannot write {ckpts}")
    assert "no space left on device" in lines[0] and "free there" in lines[0]
    assert "resume with ckpt_path=last" in lines[0]
    assert (ckpts / "last.ckpt").read_bytes() == before
    assert not [p for p in ckpts.iterdir() if ".tmp-" in p.name]
    monkeypatch.undo()
    assert train(cfg)["global_step"] == 6  # the kept last.ckpt (step 3) resumes to the end


# ---- SIGTERM ---------------------------------------------------------------------------------
# 4 batches per epoch, 3 epochs; no step checkpoints, so the SIGTERM save is the only mid-epoch one
PREEMPTIBLE = [
    *TINY_PATTERNS,
    "data.num_train=32",
    "trainer.limit_train_batches=null",
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "trainer.precision=32",
    "callbacks.last_checkpoint.every_n_train_steps=100",
    "callbacks.sample_grid.every_n_epochs=0",
]


def run_train(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_module("train", *PREEMPTIBLE, *args, f"hydra.run.dir={run_dir}", timeout=300)


def net_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(("net.", "ema."))}


@pytest.fixture(scope="module")
def preempted(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, int, bool]:
    """A run sent SIGTERM after step 6, then resumed with ckpt_path=last."""
    run_dir = tmp_path_factory.mktemp("preempted")
    killed = run_train(
        run_dir,
        "+callbacks.term._target_=tests.test_faults.SigtermAtStep",
        "+callbacks.term.step=6",
    )
    step = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    had_metrics = (run_dir / "metrics.json").exists()
    resumed = run_train(run_dir, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run_dir, killed, step, had_metrics


def test_sigterm_saves_last_ckpt_at_the_next_batch_and_resume_reaches_the_same_end(preempted):
    run_dir, killed, step, had_metrics = preempted
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-3000:]
    assert "Traceback" not in killed.stderr
    assert "Stopped by SIGTERM at step 7: last.ckpt saved; resume with ckpt_path=last" in (
        killed.stdout
    )
    assert step == 7 and not had_metrics  # the batch end after the signal; an unfinished run
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 12
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 12
    assert "Host memory:   freed blocks kept" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_sigterm_then_resume_is_bit_identical_to_an_uninterrupted_run(preempted, tmp_path):
    run_dir = preempted[0]
    res = run_train(tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = net_weights(run_dir), net_weights(tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_slurm_warning_signal_saves_then_requeues_and_the_requeued_job_resumes(preempted, tmp_path):
    """submitit's SIGUSR2 (before a time limit or preemption): last.ckpt first, then submitit's
    handler (requeue + exit); the requeued job (SLURM_RESTART_COUNT=1, no ckpt_path) resumes."""
    marker, args = tmp_path / "requeued", [*PREEMPTIBLE, f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "REQUEUE_MARKER": str(marker)}
    signalled = subprocess.run(
        [sys.executable, "-m", "tests.requeue_helpers", *args,
         "+callbacks.term._target_=tests.test_faults.SigtermAtStep",
         "+callbacks.term.step=6", "+callbacks.term.signal_name=SIGUSR2"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert signalled.returncode == 255, signalled.stderr[-3000:]  # submitit's exit after requeue
    assert marker.read_text() == "SIGUSR2"
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 7
    assert "SIGUSR2: saved" in signalled.stdout and "Traceback" not in signalled.stderr
    requeued = run_module("train", *args, timeout=300, env={"SLURM_RESTART_COUNT": "1"})
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    a, b = net_weights(preempted[0]), net_weights(tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ckpt_path_auto_resumes_when_there_is_a_last_ckpt_else_starts_fresh(tmp_path, monkeypatch):
    assert resolve_ckpt_path("auto", tmp_path) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert resolve_ckpt_path(None, tmp_path) is None  # requeued before its first checkpoint
    train(compose_cfg(tmp_path, ["trainer.max_epochs=1"], tiny=True))
    last = str(tmp_path / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path(None, tmp_path) == resolve_ckpt_path("auto", tmp_path) == last
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the job's first run: a fresh start
    assert resolve_ckpt_path(None, tmp_path) is None


# ---- crafted checkpoints -----------------------------------------------------------------------
class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_a_checkpoint_that_runs_code_on_unpickling_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "marker"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "diffusion_lab_config": {}, "payload": RunsCode(marker)}, crafted)
    res = run_module("sample", f"ckpt_path={crafted}", f"hydra.run.dir={tmp_path / 's'}")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines == [
        f"error: ckpt_path={crafted} holds more than tensors and plain data (it names "
        "posix.system); refused, as unpickling it could run code"
    ], res.stderr
    assert not marker.exists()


# ---- export ------------------------------------------------------------------------------------
def test_training_exports_the_ema_weights_and_config_as_safetensors(make_cfg, tmp_path):
    cfg = make_cfg()
    train(cfg)
    exported = tmp_path / "export"
    weights = load_file(exported / "model.safetensors")
    with safe_open(exported / "model.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "diffusion-lab/1" and meta["weights"] == "ema"
    assert meta["global_step"] == "3" and meta["source"] == "training"
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    config = json.loads((exported / "config.json").read_text())
    assert config == json.loads(json.dumps(ckpt["diffusion_lab_config"]))
    ema = {k[len("ema.module.") :]: v for k, v in ckpt["state_dict"].items() if "ema.module." in k}
    assert weights.keys() == ema.keys() and all(torch.equal(weights[k], ema[k]) for k in ema)
    net = build_net(cfg)
    net.load_state_dict(weights)  # keys exactly the net's state_dict
    # the same from the checkpoint file
    again = export_safetensors(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "again")
    assert load_file(again / "model.safetensors").keys() == weights.keys()
    with pytest.raises(UserError, match="no such file"):
        export_safetensors(tmp_path / "nope.ckpt", tmp_path / "x")
    # the pipeline loads the folder as it loads the checkpoint: the same images
    from_export = DiffusionPipeline.from_checkpoint(exported).sample(2, sampler={"steps": 2})
    from_ckpt = DiffusionPipeline.from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert torch.equal(from_export, from_ckpt.sample(2, sampler={"steps": 2}))
    with pytest.raises(UserError, match="is not an export folder"):
        DiffusionPipeline.from_checkpoint(tmp_path / "again" / "..")
