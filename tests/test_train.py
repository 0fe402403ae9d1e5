"""End-to-end: train from composed configs, resume, sample, and read back TensorBoard events."""

import json
import logging
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities._pytree import _tree_flatten
from pytorch_lightning.utilities.model_summary import ModelSummary
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffusion_lab.app.build import build_datamodule, build_module, load_module
from diffusion_lab.app.sample import sample
from diffusion_lab.app.train import quiet_lightning, train
from diffusion_lab.training.measure import forward_mflops
from diffusion_lab.training.module import BucketMeans

from .conftest import compose_cfg


def test_train_leaves_a_complete_run_directory(make_cfg, tmp_path):
    metrics = train(make_cfg("trainer.max_epochs=2"))
    for name in (
        "config.yaml",
        "metrics.json",
        "run_info.json",
        "samples/final.png",
        "checkpoints/last.ckpt",
    ):
        assert (tmp_path / name).is_file(), name
    assert len(list((tmp_path / "checkpoints").glob("epoch*.ckpt"))) == 1  # best by val loss
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["global_step"] == 6 and saved["epochs"] == 2
    assert saved["params"] == metrics["params"] > 0
    assert saved["train_images_per_sec"] > 0
    for key in ("train/loss", "val/loss", "val/loss_t0-249", "val/loss_t750-999"):
        assert key in saved and saved[key] > 0

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss_step", "val/loss", "val/loss_t0-249", "lr-Adam"} <= set(tags["scalars"])
    assert "samples" in tags["images"]
    assert len(events.Scalars("val/loss")) == 2  # one per epoch
    # timestep buckets: one point per epoch for train and val
    assert len(events.Scalars("train/loss_t0-249")) == len(events.Scalars("val/loss_t0-249")) == 2


def test_cosine_schedule_decays_the_learning_rate_every_step(make_cfg, tmp_path):
    train(make_cfg("lr_scheduler=cosine", "trainer.max_steps=6", "trainer.max_epochs=2"))
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    lrs = [e.value for e in events.Scalars("lr-Adam")]
    assert lrs[0] == pytest.approx(1e-3) and len(lrs) == 6  # every step, from optimizer.lr
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 1e-4


def test_resume_continues_at_the_right_step(make_cfg, tmp_path):
    first = tmp_path / "first"
    train(make_cfg("trainer.max_epochs=1", out=first))
    ckpt = torch.load(first / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3
    second = tmp_path / "second"
    metrics = train(
        make_cfg("trainer.max_epochs=3", f"ckpt_path={first}/checkpoints/last.ckpt", out=second)
    )
    assert metrics["global_step"] == 9 and metrics["epochs"] == 3
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)
    # the EMA weights and optimizer state came along
    assert resumed["state_dict"]["ema.n_averaged"].item() == 9
    assert resumed["optimizer_states"][0]["state"][0]["step"].item() == 9


def test_sample_from_checkpoint(make_cfg, tmp_path):
    train(make_cfg(out=tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg = compose_cfg(
        tmp_path / "s", [f"ckpt_path={ckpt}", "n=16", "sampler=ddim", "sampler.steps=4"], "sample"
    )
    out = sample(cfg)
    images = torch.load(out["tensor"])["images"]
    assert images.shape == (16, 3, 16, 16)  # 8 pattern families x 2 per row
    assert images.min() >= -1 and images.max() <= 1 and torch.isfinite(images).all()
    assert (tmp_path / "s" / "samples.png").stat().st_size > 0
    module, _ = load_module(ckpt)
    again = module.generate(
        16, labels=torch.arange(8).repeat_interleave(2), sampler={"steps": 4}, seed=0
    )
    assert torch.allclose(again, images)  # same seed, same samples


def test_bucket_means_average_each_timestep_bucket_and_stay_out_of_checkpoints(make_cfg):
    metric = BucketMeans([0, 250, 500, 750, 1000])
    metric.update(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 249, 250]))
    metric.update(torch.tensor([7.0, 9.0]), torch.tensor([999, 251]))
    means = metric.compute()
    assert torch.equal(means[[0, 1, 3]], torch.tensor([2.0, 7.0, 7.0]))
    assert torch.isnan(means[2])  # no timestep in 500-749
    # the metric's state is not saved: checkpoints load with and without it
    assert not [k for k in build_module(make_cfg()).state_dict() if "bucket" in k]


def test_model_summary_counts_the_nets_flops(make_cfg):
    for experiment in ("experiment=patterns_inpaint", "conditioning=class"):
        module = build_module(make_cfg(experiment))
        flops = ModelSummary(module).total_flops
        assert flops > 0
        assert flops == pytest.approx(forward_mflops(module.net) * 1e6)


def test_lightnings_advert_and_internal_warnings_are_dropped():
    # a handler on Lightning's own logger, at INFO: other tests (the benchmark's) quiet it
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    level = rank_zero.level
    rank_zero.addHandler(handler)
    rank_zero.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_lightning()
            _tree_flatten(torch.zeros(1))
            trainer = pl.Trainer(
                logger=False, accelerator="cpu", enable_progress_bar=False, precision="bf16-mixed"
            )
            module = pl.LightningModule()
            module.layer = torch.nn.Linear(2, 2)
            module.trainer = trainer  # as in fit(), where the summary reads the precision
            assert ModelSummary(module).model_size > 0
    finally:
        rank_zero.removeHandler(handler)
        rank_zero.setLevel(level)
    messages = [r.getMessage() for r in records]
    assert any("GPU available" in m for m in messages)  # Lightning's own lines still come through
    assert not any("litlogger" in m for m in messages)
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    assert not [w for w in caught if "model summary" in str(w.message)]


def test_warmup_then_cosine_over_the_estimated_run_and_ema_per_optimizer_step(make_cfg):
    """lr_warmup_steps ramps the rate linearly; cosine with T_max=null decays over the rest of
    the run as the trainer estimates it from max_epochs; with gradient accumulation the EMA
    moves once per optimizer step."""
    cfg = make_cfg(
        "lr_scheduler=cosine",
        "lr_warmup_steps=2",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        "+trainer.accumulate_grad_batches=2",
    )
    module = build_module(cfg)
    seen = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    datamodule = build_datamodule(cfg)
    trainer = pl.Trainer(
        **{k: v for k, v in cfg.trainer.items() if k in ("max_epochs", "limit_train_batches", "accumulate_grad_batches")},
        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Record()],
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 4  # 8 batches, 2 per optimizer step
    lr = cfg.optimizer.lr
    per_step = seen[::2]  # the rate at each optimizer step
    assert per_step[0] == pytest.approx(lr * 1e-3)  # warmup starts at 1/1000
    assert per_step[2] == pytest.approx(lr)  # warmup done: cosine from the full rate
    assert per_step[3] == pytest.approx(lr * 0.5)  # half-way through a 2-step cosine
    assert int(module.ema.n_averaged) == 4  # once per optimizer step, not per batch


def test_a_checkpoint_written_by_0_1_still_loads(make_cfg, tmp_path):
    """0.1 called the basic/efficient U-Net CourseUNet and listed data.num_workers."""
    cfg = make_cfg("trainer.max_epochs=1")
    train(cfg)
    ckpt_path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["diffusion_lab_config"]["model"]["_target_"] = "diffusion_lab.models.CourseUNet"
    ckpt["diffusion_lab_config"]["data"]["num_workers"] = 0
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    module, loaded = load_module(old)
    assert loaded.model._target_ == "diffusion_lab.models.SimpleUNet"
    assert module.generate(2, seed=0).shape[0] == 2


def test_monitor_drives_the_best_checkpoint_early_stopping_and_the_plateau_schedule(
    make_cfg, tmp_path
):
    """monitor_mode=max on a falling val/loss: each validation that is not a new maximum halves
    the rate (plateau, patience 0) and the run stops after the first one (patience 1); the best
    checkpoint is the maximum."""
    metrics = train(
        make_cfg(
            "monitor_mode=max",
            "early_stopping_patience=1",
            "lr_scheduler=plateau",
            "lr_scheduler.patience=0",
            "trainer.max_epochs=6",
        )
    )
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    val = [e.value for e in events.Scalars("val/loss")]
    worse = [i for i in range(1, len(val)) if val[i] <= max(val[:i])]
    epochs = worse[0] + 1 if worse else 6
    assert len(val) == epochs == round(metrics["epochs"])
    lrs = [e.value for e in events.Scalars("lr-Adam")]
    expected = [1e-3 * 0.5 ** sum(i in worse for i in range(j)) for j in range(len(lrs))]
    assert lrs == pytest.approx(expected)
    (best,) = (tmp_path / "checkpoints").glob("epoch*.ckpt")
    assert best.stem.endswith(f"val_loss{max(val):.4f}")


def test_grids_of_several_validations_an_epoch_do_not_overwrite_each_other(make_cfg, tmp_path):
    train(make_cfg("trainer.val_check_interval=1", "trainer.limit_val_batches=1"))
    grids = sorted(p.name for p in (tmp_path / "samples").glob("epoch_*.png"))
    assert grids == [f"epoch_001_step_00000{s}.png" for s in (1, 2, 3)]
