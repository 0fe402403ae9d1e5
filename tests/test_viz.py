"""Analysis figures: each writes a PNG of the size its grid implies, from code and from the CLI;
the training callback puts them in TensorBoard and <run>/figures/."""

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffusion_lab.app.build import build_module, load_module
from diffusion_lab.app.train import train
from diffusion_lab.app.viz import main as viz_main
from diffusion_lab.data.patterns import generate_patterns
from diffusion_lab.figures import (
    denoising_progression_figure,
    forward_process_figure,
    pick_images,
    save_figure,
    time_embedding_figure,
    triplets_figure,
)
from diffusion_lab.figures.plots import (
    CELL,
    HEADER,
    LABEL,
    evenly_spaced,
    progression_frames,
    schedules_for,
    sinusoidal_dim,
)

from .conftest import compose_cfg

DPI = 40


def png(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    return np.asarray(Image.open(path).convert("RGB"))


def assert_size(image: np.ndarray, width_in: float, height_in: float, dpi: int = DPI) -> None:
    h, w = image.shape[:2]
    assert abs(w - width_in * dpi) <= 1 and abs(h - height_in * dpi) <= 1, (w, h)
    assert image.std() > 10  # a picture, not a blank canvas


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny training run with the figures callback on (it is in callbacks/default.yaml)."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_cfg(
        out,
        ["trainer.max_epochs=2", "callbacks.analysis_figures.epochs=[1]", "schedule.timesteps=50"],
        tiny=True,
    )
    train(cfg)
    return out


@pytest.fixture
def images():
    data, labels, _ = generate_patterns(24, 16, seed=3)
    return pick_images({"image": data, "label": labels}, 3)


def test_forward_process_figure_size_and_timesteps(images, tmp_path):
    x, _ = images
    assert x.shape == (3, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert evenly_spaced(1000, 10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    fig = forward_process_figure(x, schedules_for(300), steps=10)
    image = png(save_figure(fig, tmp_path / "forward.png", dpi=DPI))
    assert_size(image, (2 * 10 + 1) * CELL, HEADER + 3 * CELL)  # two panels, one gap column


def test_time_embedding_figure(tmp_path):
    image = png(save_figure(time_embedding_figure(300, 64), tmp_path / "emb.png", dpi=DPI))
    assert_size(image, 11, 4.5)


def test_progression_and_triplets_from_a_model(images, tmp_path):
    module = build_module(compose_cfg(tmp_path, ["schedule.timesteps=50"], tiny=True))
    x, labels = images
    assert sinusoidal_dim(module.net) == 16  # the tiny SimpleUNet's time_dim

    frames = progression_frames(module, n=2, columns=10, labels=labels[:2], sampler={"steps": 5})
    assert [t for t, _ in frames] == [49, 37, 24, 12, 0]  # fewer DDIM steps than columns
    final = module.generate(2, labels=labels[:2], sampler={"steps": 5}, seed=0)
    assert torch.allclose(frames[-1][1], final)  # the last column is the sample itself

    fig = denoising_progression_figure(module, n=2, columns=10, sampler={"steps": 5})
    assert_size(png(save_figure(fig, tmp_path / "p.png", DPI)), LABEL + 5 * CELL, HEADER + 2 * CELL)
    fig = triplets_figure(module, x, labels, timesteps=[5, 25, 45])
    assert_size(png(save_figure(fig, tmp_path / "t.png", DPI)), LABEL + 9 * CELL, HEADER + 3 * CELL)


def test_callback_logs_figures_to_tensorboard_and_png(run):
    names = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert names == [
        "forward_process.png",
        "progression_epoch_001.png",
        "progression_final.png",
        "time_embedding.png",
        "triplets_epoch_001.png",
        "triplets_final.png",
    ]
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = set(events.Tags()["images"])
    assert {
        "figures/forward_process",
        "figures/time_embedding",
        "figures/triplets",
        "figures/progression",
    } <= tags
    first = events.Images("figures/forward_process")[0]
    assert first.step == 0  # logged before the first training step
    # 4 images (n_images) at 10 timesteps for two schedules, at the callback's dpi (80)
    assert (first.width, first.height) == (round(21 * CELL * 80), round((HEADER + 4 * CELL) * 80))
    assert len(events.Images("figures/triplets")) == 2  # after epoch 1 and at the end


def test_cli_writes_every_figure_from_a_checkpoint(run, tmp_path, capsys):
    ckpt = run / "checkpoints" / "last.ckpt"
    viz_main(["all", "--ckpt", str(ckpt), "--out", str(tmp_path), "--n", "2", "--dpi", str(DPI)])
    printed = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[1] for p in printed) == [
        "embedding.png",
        "forward.png",
        "progression.png",
        "triplets.png",
    ]
    _, cfg = load_module(ckpt)
    steps = min(10, cfg.sampler.steps)  # the tiny run samples with 3 DDIM steps
    assert_size(png(tmp_path / "progression.png"), LABEL + steps * CELL, HEADER + 2 * CELL)
    assert_size(png(tmp_path / "forward.png"), 21 * CELL, HEADER + 2 * CELL)


def test_cli_forward_from_config_overrides_and_errors(tmp_path, capsys):
    out = tmp_path / "f.png"
    viz_main(["forward", "data.image_size=16", "data.num_val=8", "--out", str(out), "--n", "2",
              "--steps", "5", "--dpi", str(DPI)])  # fmt: skip
    assert_size(png(out), (2 * 5 + 1) * CELL, HEADER + 2 * CELL)
    with pytest.raises(SystemExit) as info:
        viz_main(["progression", "--out", str(tmp_path / "p.png")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: progression: --ckpt PATH is required (a .ckpt from a training run)"
