"""The notebook pipeline: a checkpoint loaded without Lightning or Hydra samples what the
LightningModule samples; the runnable example works in a fresh process."""

import subprocess
import sys

import pytest
import torch
from omegaconf import open_dict

from diffusion_lab.app.build import load_module
from diffusion_lab.app.train import train
from diffusion_lab.errors import UserError
from diffusion_lab.sampling import DiffusionPipeline

from .conftest import ROOT, compose_cfg


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline_run")
    cfg = compose_cfg(
        out,
        [
            "conditioning=class_cfg",
            "data.image_size=8",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
        ],
        tiny=True,
    )
    with open_dict(cfg):
        cfg.callbacks.sample_grid = None
    return train(cfg)["last_checkpoint"]


def test_pipeline_samples_what_the_lightning_module_samples(checkpoint):
    pipe = DiffusionPipeline.from_checkpoint(checkpoint)
    module, _ = load_module(checkpoint)
    labels = torch.tensor([0, 3, 5])
    for sampler in (
        {"name": "ddim", "steps": 3},
        {"name": "dpmpp_2m", "steps": 4, "spacing": "karras"},
    ):
        ours = pipe.sample(3, labels=labels, sampler=sampler, seed=2, guidance_scale=2.0)
        theirs = module.generate(3, labels=labels, sampler=sampler, seed=2, guidance_scale=2.0)
        assert torch.equal(ours, theirs)
    assert pipe.nfe({"name": "heun", "steps": 4}) == 7


def test_pipeline_inpaints_and_records_the_trajectory(checkpoint):
    pipe = DiffusionPipeline.from_checkpoint(checkpoint)
    known = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1
    filled = pipe.inpaint(known, mask, sampler={"name": "ddim", "steps": 3})
    assert torch.equal(filled * mask, known * mask)
    traj = pipe.trajectory(2, sampler={"name": "heun", "steps": 3})
    assert traj.x_t.shape == (3, 2, 3, 8, 8) and traj.x0.shape == (3, 2, 3, 8, 8)
    assert torch.equal(traj.x_t[-1], traj.images)


def test_pipeline_errors_are_one_line(tmp_path, checkpoint):
    with pytest.raises(UserError, match="no such file"):
        DiffusionPipeline.from_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="is not a readable checkpoint"):
        DiffusionPipeline.from_checkpoint(tmp_path / "junk.ckpt")
    pipe = DiffusionPipeline.from_checkpoint(checkpoint)
    with pytest.raises(UserError, match="outside the trained range"):
        pipe.sample(1, labels=torch.tensor([99]))


def test_example_runs_without_lightning_or_hydra(tmp_path, checkpoint):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "sample_from_checkpoint.py"),
            f"--ckpt={checkpoint}",
            "--n=4",
            "--steps=3",
            "--device=cpu",
            f"--out={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "network calls per image" in result.stdout
    for name in ("samples.png", "inpaint.png", "trajectory.png"):
        assert (tmp_path / name).is_file()
