"""Crash safety, exact resume, determinism, precision, DDP on CPU and the submitit launcher."""

import subprocess
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffusion_lab import hardware
from diffusion_lab.app.build import build_module, load_module
from diffusion_lab.app.hydra_entry import run_task
from diffusion_lab.app.train import _chosen_for_this_cpu, train
from diffusion_lab.sampling import core as sampling_core
from diffusion_lab.training.module import DiffusionModule

from .conftest import TINY_PATTERNS, compose_cfg, run_module

# 4 batches per epoch, 3 epochs, last.ckpt every 2 steps, every step's loss logged
RESUMABLE = [
    *TINY_PATTERNS,
    "data.num_train=32",
    "trainer.limit_train_batches=null",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
    "trainer.deterministic=true",
    "callbacks.last_checkpoint.every_n_train_steps=2",
    "callbacks.sample_grid.every_n_epochs=0",
]


def run_train(run_dir: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    res = run_module("train", *args, f"hydra.run.dir={run_dir}", timeout=300)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def step_losses(run_dir: Path) -> dict[int, float]:
    """train/loss_step by step, later event files (a resumed process) overriding earlier ones."""
    losses: dict[int, float] = {}
    for f in sorted(
        (run_dir / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime
    ):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0}).Reload()
        for ev in acc.Scalars("train/loss_step"):
            losses[ev.step] = ev.value
    return losses


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_train(run_dir, *RESUMABLE, check=True)
    return step_losses(run_dir)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path, uninterrupted):
    assert len(uninterrupted) == 12
    killed = run_train(
        tmp_path,
        *RESUMABLE,
        "+callbacks.kill._target_=tests.helpers.KillAtStep",
        "+callbacks.kill.step=7",
    )
    assert killed.returncode == -9
    assert (
        torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    )
    run_train(tmp_path, *RESUMABLE, "ckpt_path=last", check=True)
    assert step_losses(tmp_path) == uninterrupted  # bit-identical on CPU


@pytest.mark.slow
def test_sigkill_mid_checkpoint_save_keeps_last_intact(tmp_path, uninterrupted):
    killed = run_train(
        tmp_path,
        *RESUMABLE,
        "checkpoint_io._target_=tests.helpers.KillDuringSave",
        "+checkpoint_io.at_save=3",
    )
    assert killed.returncode == -9
    last = tmp_path / "checkpoints" / "last.ckpt"
    # saves: step 2 (last.ckpt), step 4 best, step 4 last.ckpt <- killed mid-write
    assert torch.load(last, weights_only=False)["global_step"] == 2
    assert not (tmp_path / "checkpoints" / "last-v1.ckpt").exists()
    load_module(last)  # loads cleanly
    run_train(tmp_path, *RESUMABLE, "ckpt_path=last", check=True)
    assert step_losses(tmp_path) == uninterrupted


def test_same_seed_same_losses_and_samples(make_cfg, tmp_path):
    a = train(make_cfg(out=tmp_path / "a"))
    b = train(make_cfg(out=tmp_path / "b"))
    assert a["train/loss"] == b["train/loss"] and a["val/loss"] == b["val/loss"]
    sa = load_module(tmp_path / "a" / "checkpoints" / "last.ckpt")[0].generate(
        4, sampler={"steps": 3}
    )
    sb = load_module(tmp_path / "b" / "checkpoints" / "last.ckpt")[0].generate(
        4, sampler={"steps": 3}
    )
    assert torch.equal(sa, sb)
    assert '"seed": 42' in (tmp_path / "a" / "run_info.json").read_text()


def test_bf16_mixed_trains_on_cpu_and_samples_under_bf16_autocast_where_bf16_is_fast(
    make_cfg, monkeypatch
):
    metrics = train(make_cfg("trainer.precision=bf16-mixed"))
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    cases = [("bf16-mixed", True, [True]), ("bf16-mixed", False, [False]), ("32", True, [False])]
    for precision, fast_bf16, expected in cases:
        monkeypatch.setattr(sampling_core, "cpu_has_fast_bf16", lambda fast=fast_bf16: fast)
        module = build_module(make_cfg(f"trainer.precision={precision}"))
        seen: list[bool] = []
        module.sampling_net.register_forward_pre_hook(
            lambda m, args, seen=seen: seen.append(torch.is_autocast_enabled("cpu"))
        )
        out = module.generate(2, sampler={"steps": 1})
        assert seen == expected and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_cpu_precision_defaults_to_bf16_mixed_only_where_bf16_is_measured_fast(
    make_cfg, monkeypatch
):
    for fast, expected in ((True, "bf16-mixed"), (False, "32")):
        monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda fast=fast: fast)
        cfg = make_cfg(tiny=False)
        assert cfg.trainer.precision == expected == _chosen_for_this_cpu(cfg)
        for override, pinned in (("trainer.precision=32", "32"), ("trainer=gpu", "16-mixed")):
            cfg = make_cfg(override, tiny=False)
            assert str(cfg.trainer.precision) == pinned and _chosen_for_this_cpu(cfg) is None
        assert make_cfg("trainer=ddp_cpu", tiny=False).trainer.precision == expected


def test_bf16_default_is_measured_once_per_cpu_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(hardware, "_has_bf16_instructions", lambda: False)
    hardware.bf16_speedup.cache_clear()
    assert hardware.bf16_speedup() is None and hardware.default_cpu_precision() == "32"
    assert hardware.cpu_precision_reason() == "this CPU has no bf16 instructions"
    assert not hardware.calibration_cache().exists()  # nothing measured, nothing cached
    monkeypatch.setattr(hardware, "_has_bf16_instructions", lambda: True)
    for fp32, bf16, expected in ((1.0, 0.5, "bf16-mixed"), (1.0, 0.95, "32")):
        hardware.calibration_cache().unlink(missing_ok=True)
        hardware.bf16_speedup.cache_clear()
        times = {False: fp32, True: bf16}
        monkeypatch.setattr(hardware, "_conv_step_seconds", lambda bf16, t=times: t[bf16])
        assert hardware.default_cpu_precision() == expected
        assert f"measured {fp32 / bf16:.2f}x the float32 rate" in hardware.cpu_precision_reason()
        hardware.bf16_speedup.cache_clear()  # a new process: the cache answers, nothing runs
        monkeypatch.setattr(hardware, "_conv_step_seconds", lambda bf16: 1 / 0)
        assert hardware.default_cpu_precision() == expected
    hardware.bf16_speedup.cache_clear()


def test_cpu_name_tells_hosts_with_the_same_model_name_apart():
    def info(model: str, flags: str) -> str:
        block = (
            f"processor\t: {{}}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}"
        )
        block += f"\nmodel name\t: AMD EPYC\nflags\t\t: fpu {flags}\n"
        return "\n".join(block.format(i) for i in range(2))  # two processors, the first read

    zen3 = hardware.cpu_name(info("1", "avx2 fma"))
    zen4 = hardware.cpu_name(info("17", "avx2 avx512f avx512_bf16"))
    assert zen3 == "AMD EPYC (family 25 model 1, avx2)"
    assert zen4 == "AMD EPYC (family 25 model 17, avx512_bf16)"
    assert hardware.cpu_name("model name\t: Some CPU\n") == "Some CPU"


def test_the_calibration_workload_runs_in_both_precisions():
    assert hardware._conv_step_seconds(bf16=False, repeats=1) > 0
    assert hardware._conv_step_seconds(bf16=True, repeats=1) > 0


@pytest.mark.parametrize("check_every", [1, 4])  # 4: as on a GPU, checked every N steps
def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(
    tmp_path, capsys, monkeypatch, check_every
):
    monkeypatch.setattr(DiffusionModule, "finite_check_every", check_every)
    first = compose_cfg(tmp_path, ["trainer.max_epochs=1"], tiny=True)
    train(first)
    before = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    # a fresh run into the same directory whose loss blows up at its second step
    cfg = compose_cfg(tmp_path, ["trainer.max_epochs=2", "optimizer.lr=1e30"], tiny=True)
    with pytest.raises(SystemExit):
        run_task(train, cfg)
    err = capsys.readouterr().err
    # found at step 4 or at the epoch-end checkpoint (step 3), whichever comes first, and the
    # message names the step it happened at
    assert "training loss became nan at step 1" in err
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == before


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path):
    res = run_module(
        "train",
        "-m",
        "hydra/launcher=local",
        *TINY_PATTERNS,
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0", "1"):
        assert (tmp_path / job / "metrics.json").is_file()


def test_gpu_ddp_config_uses_sync_batchnorm_and_mixed_precision(tmp_path):
    cfg = compose_cfg(tmp_path, ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is True
    assert cfg.trainer.precision == "16-mixed" and cfg.trainer.devices * cfg.trainer.num_nodes == 8
