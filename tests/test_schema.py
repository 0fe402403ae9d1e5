"""Every class of bad config value is one line naming the key and what is allowed, before any
work: types and keys are checked against what reads them (app/schema.py)."""

import pytest

from diffusion_lab.app.schema import check_train_config
from diffusion_lab.app.train import train
from diffusion_lab.errors import UserError
from diffusion_lab.hardware import pick_device

from .conftest import run_module


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=abc", "seed='abc' must be an integer"),
        ("channels_last=maybe", "channels_last='maybe' must be true or false"),
        ("trainer.precision=17", "trainer.precision=17 must be one of 64, 32, 16,"),
        ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5 must be an integer"),
        ("model.channels=[]", "model.channels=[] must list at least one value"),
        ("+model.width=8", "model.width is not a setting of SimpleUNet; its settings: channels"),
        ("+trainer.max_epoch=3", "trainer.max_epoch is not a setting of Trainer"),
        ("optimizer.lr=fast", "optimizer.lr='fast' must be a number"),
        ("data.batch_size=big", "data.batch_size='big' must be an integer"),
        ("schedule.start=low", "schedule.start='low' must be a number"),
        ("callbacks.sample_grid.n=x", "callbacks.sample_grid.n='x' must be an integer"),
        ("+data.num_workers=4", "data.num_workers=4 does nothing"),
    ],
)
def test_bad_values_are_one_line_before_any_work(make_cfg, tmp_path, override, message):
    cfg = make_cfg(override)
    with pytest.raises(UserError) as err:
        train(cfg)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "checkpoints").exists()


def test_every_shipped_config_passes_the_schema(make_cfg):
    from .test_conditioning import EXPERIMENTS

    for overrides in [[f"experiment={e}"] for e in EXPERIMENTS] + [
        ["trainer=gpu"], ["trainer=ddp"], ["trainer=slurm"], ["callbacks=with_eval"],
        ["logger=csv"], ["lr_scheduler=plateau"], ["lr_scheduler=cosine"], ["data=mnist"],
    ]:  # fmt: skip
        check_train_config(make_cfg(*overrides, tiny=False))


def test_a_device_that_is_not_there():
    with pytest.raises(UserError, match="device=cuda:7: this machine has"):
        pick_device("cuda:7")
    with pytest.raises(UserError, match="device='gpu0' is not a device"):
        pick_device("gpu0")


def test_sampler_key_without_a_sampler_says_what_to_write(tmp_path):
    res = run_module("sample", "ckpt_path=x.ckpt", "sampler.steps=10", f"hydra.run.dir={tmp_path}")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "error: sampler.steps=10: choose a sampler first, e.g. sampler=ddim sampler.steps=10 "
        "(sampler options: " + res.stderr.split("(sampler options: ")[1].strip()
    )
    assert "did you mean" not in res.stderr
    res = run_module("sample", "ckpt_path=x.ckpt", "data.root=/tmp", f"hydra.run.dir={tmp_path}")
    assert res.returncode == 2
    assert "`sample` has no data settings; it uses the checkpoint's" in res.stderr
    assert "data_root=" in res.stderr
