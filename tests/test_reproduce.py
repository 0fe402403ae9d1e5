"""The write-ups' set-ups as written (parameter counts, embedding layout, timestep buckets) and the
`reproduce` command's verdicts."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from diffusion_lab.app.build import build_net
from diffusion_lab.app.reproduce import FAIL, NOT_CHECKED, PASS, compare, reproduce
from diffusion_lab.errors import UserError
from diffusion_lab.models import SimpleUNet
from diffusion_lab.models.simple_unet import interleaved_sinusoidal_embedding
from diffusion_lab.training.module import BucketMeans, bucket_edges
from tests.conftest import CONF, compose_cfg


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


# the counts the write-ups print for their networks (1 channel, 28x28)
@pytest.mark.parametrize(
    "experiment, expected",
    [("fashion_mnist_basic", 3_712_257), ("fashion_mnist_efficient", 678_961)],
)
def test_parameter_counts_equal_the_write_ups(tmp_path, experiment, expected):
    cfg = compose_cfg(tmp_path, [f"experiment={experiment}"])
    assert n_params(build_net(cfg)) == expected
    reference = yaml.safe_load((CONF / "reference" / f"{experiment}.yaml").read_text())
    assert reference["figures"]["params"]["value"] == expected


def test_default_layout_is_unchanged():
    # configs and checkpoints from before the write-up's layout keep their shapes
    efficient = SimpleUNet(1, 28, (24, 48, 96), 192, middle_conv=True)
    assert n_params(efficient) == 679_081


def test_the_write_up_layout_keeps_the_image_size_with_a_2x2_first_conv():
    net = SimpleUNet(1, 16, (8, 16), 16, True, stem_kernel=2, conv2_act=False, middle_act=False)
    x = torch.randn(2, 1, 16, 16)
    assert net(x, torch.tensor([0, 299])).shape == x.shape
    with pytest.raises(UserError, match="model.stem_kernel=5"):
        SimpleUNet(1, 16, (8, 16), 16, stem_kernel=5)
    with pytest.raises(UserError, match="model.time_embedding='x'"):
        SimpleUNet(1, 16, (8, 16), 16, time_embedding="x")


def test_interleaved_embedding_alternates_sin_and_cos_with_a_power_per_index():
    t = torch.tensor([0, 7])
    emb = interleaved_sinusoidal_embedding(t, 6)
    assert emb[0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]  # t = 0: sin 0, cos 0
    for i in range(6):
        arg = 7 / 10000 ** (2 * i / 6)
        assert emb[1, i].item() == pytest.approx(math.sin(arg) if i % 2 == 0 else math.cos(arg))


def test_timestep_buckets_take_explicit_edges():
    assert bucket_edges(300, [0, 100, 200, 300]) == [0, 100, 200, 300]
    assert bucket_edges(300, 4) == [0, 75, 150, 225, 300]
    with pytest.raises(UserError, match="must rise from 0 to schedule.timesteps=300"):
        bucket_edges(300, [0, 100, 250])
    metric = BucketMeans([0, 100, 200, 300])
    metric.update(torch.tensor([1.0, 3.0, 5.0, 7.0]), torch.tensor([0, 99, 100, 299]))
    assert metric.compute().tolist() == [2.0, 5.0, 7.0]


def test_fashion_experiments_use_the_write_ups_buckets_and_flips(tmp_path):
    cfg = compose_cfg(tmp_path, ["experiment=fashion_mnist_efficient"], config_name="reproduce")
    assert list(cfg.timestep_buckets) == [0, 100, 200, 300]
    assert cfg.data.hflip is True and cfg.ema_decay is None
    assert cfg.epochs is None and cfg.task_name == "fashion_mnist_efficient"


def test_compare_checks_epochs_run_and_never_passes_what_it_cannot_measure():
    reference = {
        "figures": {
            "params": {"value": 100, "tolerance": 0},
            "train_loss": {"per_epoch": {1: 0.2, 2: 0.1, 5: 0.05}, "rel_tolerance": 0.05},
            "clip_share": {"value": 0.75, "not_checked": "needs CLIP weights"},
        }
    }
    rows = compare(reference, {"params": 100, "train_loss": {1: 0.205, 2: 0.2}}, epochs_run=2)
    verdicts = {r["figure"]: r["verdict"] for r in rows}
    assert verdicts["params"] == PASS
    assert verdicts["train_loss epoch 1"] == PASS
    assert verdicts["train_loss epoch 2"] == FAIL
    assert verdicts["train_loss epochs 5-5"].startswith(NOT_CHECKED)
    assert verdicts["clip_share"] == f"{NOT_CHECKED}: needs CLIP weights"


def test_tiny_reproduce_run_fails_the_wrong_figure_and_passes_the_right_one(
    tmp_path, fashion_root, capsys
):
    probe = compose_cfg(tmp_path / "probe", ["experiment=fashion_mnist_efficient"], tiny=True)
    right = n_params(build_net(probe))
    reference = {
        "source": "a test",
        "hardware": "none",
        "figures": {
            "params": {"value": right, "tolerance": 0},
            "wrong_params": {"value": right + 1, "tolerance": 0, "measure": "params"},
            # no noise-prediction loss is this small after a few steps
            "train_loss": {"per_epoch": {1: 1.0e-4, 3: 1.0e-4}, "rel_tolerance": 0.05},
            "clip_share": {"value": 0.75, "not_checked": "needs pretrained CLIP weights"},
        },
    }
    ref_file = tmp_path / "reference.yaml"
    ref_file.write_text(yaml.safe_dump(reference))
    out = tmp_path / "run"
    cfg = compose_cfg(
        out,
        [
            "experiment=fashion_mnist_efficient",
            "epochs=1",
            f"reference_file={ref_file}",
            f"data.root={fashion_root}",
        ],
        config_name="reproduce",
        tiny=True,
    )
    metrics = reproduce(cfg)
    printed = capsys.readouterr().out
    assert f"| params | {right:,} | {right:,} | ±0 | PASS |" in printed
    assert f"| wrong_params | {right + 1:,} | {right:,} | ±0 | FAIL |" in printed
    assert "| train_loss epoch 1 | 0.0001 |" in printed and "| ±5% | FAIL |" in printed
    assert "not checked here: this run trained 1 epochs" in printed
    assert "not checked here: needs pretrained CLIP weights" in printed
    assert metrics["reproduce_pass"] == 1 and metrics["reproduce_fail"] == 2

    report = json.loads(Path(out, "reproduce.json").read_text())
    (epoch,) = report["epochs"]
    assert epoch["epoch"] == 1 and epoch["steps"] == 3 and epoch["train_loss"] > 0
    assert set(epoch["buckets"]) == {"t0-99", "t100-199", "t200-299"}
    assert (out / "reproduce.md").read_text().startswith("# reproduce fashion_mnist_efficient")
    assert (out / "reproduce.png").stat().st_size > 0


def test_style_ink_script_measures_every_class_of_a_tiny_style_checkpoint(
    tmp_path, cifar_batches, capsys
):
    import argparse
    import importlib.util

    from diffusion_lab.app.train import train

    cfg = compose_cfg(
        tmp_path / "run",
        ["experiment=cifar10_style", f"data.root={cifar_batches}", "data.image_size=8"],
        tiny=True,
    )
    metrics = train(cfg)
    spec = importlib.util.spec_from_file_location(
        "measure_style_ink", Path(__file__).parents[1] / "scripts" / "measure_style_ink.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = argparse.Namespace(
        ckpt=metrics["last_checkpoint"], n=2, steps=2, data_root=str(cifar_batches),
        classifier_images=64, classifier_epochs=1, out=str(tmp_path / "ink"), cpu=True,
    )  # fmt: skip
    result = script.measure(args)
    assert len(result["rows"]) == 10
    assert all(0 <= r["ink_thick"] <= 1 and 0 <= r["ink_thin"] <= 1 for r in result["rows"])
    assert (tmp_path / "ink" / "style_grid.png").is_file()
    assert "| class | ink thick | ink thin |" in capsys.readouterr().out
