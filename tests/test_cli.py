"""Bad input as a user meets it: one `error:` line naming the key, exit code 2, no traceback."""

import subprocess

import pytest

from diffusion_lab.app.hydra_entry import check_overrides, run_task
from diffusion_lab.app.sample import sample
from diffusion_lab.app.train import train
from diffusion_lab.errors import UserError

from .conftest import compose_cfg, run_module


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return run_module(module, *args, timeout=180)


@pytest.mark.parametrize(
    "args, message",
    [
        (["optimizer.lr=-1"], "optimizer.lr=-1 must be > 0"),
        (["data.batch_size=0"], "data.batch_size=0 must be >= 1"),
        (["data.batch_size=abc"], "data.batch_size='abc' must be an integer"),
        (["schedule.timesteps=0"], "schedule.timesteps=0 must be >= 2"),
        (["schedule.end=1.5"], "schedule.end=1.5 must be in (0, 1)"),
        (["schedule=cosine", "schedule.max_beta=2"], "schedule.max_beta must be in (0, 1)"),
        (["data.image_size=15"], "data.image_size=15 cannot be halved 1 times"),
        (["model=gelu_unet", "model.groups=3"], "model.groups=3 must divide every width"),
        (["data=mnist", "data.root=/nonexistent"], "MNIST files not found"),
        (["data=folder", "data.root=/nonexistent"], "data.root=/nonexistent is not a directory"),
        (["conditioning=attributes"], "'thickness' is not provided by PatternDataModule"),
        (["ckpt_path=/nonexistent.ckpt"], "ckpt_path=/nonexistent.ckpt: no such file"),
        (["diffusion.objective=score"], "diffusion.objective='score' is not one of"),
        (
            ["diffusion.timestep_sampling=lognormal"],
            "diffusion.timestep_sampling='lognormal' is not one of",
        ),
        (
            ["lr_scheduler=cosine", "lr_scheduler.T_max=0"],
            "lr_scheduler.T_max=0 must be a number of",
        ),
        (["trainer.val_check_interval=50"], "trainer.val_check_interval=50 is more than the"),
    ],
)
def test_train_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    cfg = compose_cfg(tmp_path / "run", args, tiny=True)
    with pytest.raises(SystemExit) as exit_info:
        run_task(train, cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained or written


def test_unknown_config_choice_from_the_command_line(tmp_path):
    res = run("train", "model=unet9000", f"hydra.run.dir={tmp_path}")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "error: model=unet9000: no such model config; "
        "choose one of: attn_unet, basic_unet, efficient_unet, gelu_unet, light_unet"
    )
    assert not any(tmp_path.iterdir())  # stopped before Hydra made the run directory


@pytest.mark.parametrize(
    "config, args, message",
    [
        (
            "train",
            ["trainer.max_epoch=3"],
            "trainer.max_epoch is not a config key; did you mean trainer.max_epochs?",
        ),
        ("train", ["optimzer.lr=1e-3"], "optimzer is not a config key; did you mean optimizer?"),
        (
            "train",
            ["data=mnist", "data.rooot=x"],
            "data.rooot is not a config key; did you mean data.root?",
        ),
        ("train", ["model.xyz=1"], "model.xyz is not a config key; keys of model: _target_,"),
        ("train", ["-m", "model=basic_unet,unet9000"], "model=unet9000: no such model config"),
        (
            "train",
            ["experiment=nope"],
            "experiment=nope: no such experiment config; choose one of: cifar10_class,",
        ),
        ("train", ["data.batch_size=[1"], "cannot read the override 'data.batch_size=[1'"),
        (
            "sample",
            ["ckpt_path=x", "samplr=ddim"],
            "samplr is not a config key; did you mean sampler?",
        ),
        ("evaluate", ["tsk=clip_guide"], "tsk is not a config key; did you mean task?"),
    ],
)
def test_config_typos_are_one_line_naming_the_key_and_the_choices(config, args, message):
    with pytest.raises(UserError) as error:
        check_overrides(config, args)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "model=basic_unet,efficient_unet", "seed=1,2,3"],
        ["-m", "hparams_search=optuna_val_loss", "optimizer.lr=interval(1e-4,1e-2)"],
        ["experiment=patterns_inpaint", "hydra.run.dir=/tmp/x", "+trainer.gradient_clip_val=1"],
        ["--cfg", "job", "not_a_key=1"],  # Hydra's own flags: Hydra checks those
    ],
)
def test_valid_command_lines_pass_the_check(args):
    check_overrides("train", args)


def test_corrupt_checkpoint_from_the_command_line(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    res = run("sample", f"ckpt_path={bad}", f"hydra.run.dir={tmp_path}")
    assert res.returncode == 2
    assert "is not a readable checkpoint" in res.stderr and "Traceback" not in res.stderr


def test_checkpoint_of_another_model_config(tmp_path, capsys, make_cfg):
    import torch

    train(make_cfg(out=tmp_path / "a"))
    ckpt = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["diffusion_lab_config"]["model"]["channels"] = [8, 32]  # as if trained with other widths
    torch.save(ckpt, tmp_path / "other.ckpt")
    cfg = compose_cfg(tmp_path / "s", [f"ckpt_path={tmp_path / 'other.ckpt'}"], "sample")
    with pytest.raises(SystemExit):
        run_task(sample, cfg)
    assert "was trained with a different model config" in capsys.readouterr().err
