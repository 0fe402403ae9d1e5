"""The independent evaluation patterns (data/eval_patterns.py): format, determinism, balance,
independence from the training generator, and evaluate's independent/* figures."""

import json
import logging
from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf

from diffusion_lab.app.evaluate import evaluate, pattern_sources
from diffusion_lab.app.train import train
from diffusion_lab.data.eval_patterns import render_eval_patterns
from diffusion_lab.data.patterns import BLUE, FAMILIES, RED, generate_patterns
from diffusion_lab.errors import UserError

from .conftest import compose_cfg

PERIODIC = ("checkerboard", "stripes", "grid", "dots", "zigzag", "waves")


def test_deterministic_for_a_seed():
    images, labels = render_eval_patterns(64, 16, seed=5)
    again, labels_again = render_eval_patterns(64, 16, seed=5)
    assert torch.equal(images, again) and torch.equal(labels, labels_again)
    other, _ = render_eval_patterns(64, 16, seed=6)
    assert not torch.equal(images, other)


def test_labels_are_balanced_over_the_families():
    _, labels = render_eval_patterns(64, 16, seed=0)
    assert torch.bincount(labels, minlength=8).tolist() == [8] * 8
    _, labels = render_eval_patterns(101, 16, seed=1)  # 101 = 8 * 12 + 5
    assert sorted(torch.bincount(labels, minlength=8).tolist()) == [12] * 3 + [13] * 5
    assert labels[:16].tolist() != sorted(labels[:16].tolist())  # shuffled, not in runs


@pytest.mark.parametrize("size", [16, 32])
def test_same_format_and_colours_as_the_training_generator(size):
    train_images, train_labels, _ = generate_patterns(64, size, seed=0)
    images, labels = render_eval_patterns(64, size, seed=0)
    assert images.shape == train_images.shape and images.dtype == train_images.dtype
    assert images.is_contiguous() and labels.dtype == train_labels.dtype
    assert int(labels.min()) == 0 and int(labels.max()) == len(FAMILIES) - 1
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3)
    assert {tuple(p) for p in pixels.unique(dim=0).tolist()} == {RED, BLUE}
    # every image is a pattern, not a flat fill, and either colour is the foreground
    red = (images[:, 0] == 255).flatten(1).float().mean(1)
    assert ((red > 0) & (red < 1)).all()
    assert (red > 0.5).any() and (red < 0.5).any()
    with pytest.raises(UserError, match="image_size=4"):
        render_eval_patterns(8, 4)


def test_no_image_equals_a_training_generator_image():
    images, _ = render_eval_patterns(512, 16, seed=0)
    train_images, _, _ = generate_patterns(4096, 16, seed=0)
    seen = {bytes(x.numpy()) for x in train_images}
    assert not any(bytes(x.numpy()) in seen for x in images)


def _dominant_frequencies(images: torch.Tensor) -> Counter:
    """How often each (|fy|, |fx|) is an image's strongest non-constant Fourier component."""
    x = images[:, 0].float() / 255
    spectrum = torch.fft.fft2(x - x.mean((1, 2), keepdim=True)).abs()
    size = x.shape[-1]
    peak = spectrum.flatten(1).argmax(1)
    fy, fx = peak // size, peak % size
    fy, fx = torch.minimum(fy, size - fy), torch.minimum(fx, size - fx)  # +-f: one component
    return Counter(zip(fy.tolist(), fx.tolist()))


def _total_variation(a: Counter, b: Counter) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def test_dominant_spatial_frequency_differs_for_the_periodic_families():
    train_a, labels_a, _ = generate_patterns(1600, 16, seed=0)
    train_b, labels_b, _ = generate_patterns(1600, 16, seed=1)
    indep, labels_i = render_eval_patterns(1600, 16, seed=0)
    for family in PERIODIC:
        f = FAMILIES.index(family)
        train_freqs = _dominant_frequencies(train_a[labels_a == f])
        # two draws of the training generator agree; the independent one does not
        same = _total_variation(train_freqs, _dominant_frequencies(train_b[labels_b == f]))
        cross = _total_variation(train_freqs, _dominant_frequencies(indep[labels_i == f]))
        assert same < 0.35 and cross > 0.6 and cross > 2 * same, (family, same, cross)


def test_pattern_sources_are_checked():
    patterns = OmegaConf.create({"data": {"_target_": "diffusion_lab.PatternDataModule"}})
    digits = OmegaConf.create({"data": {"_target_": "diffusion_lab.DigitsDataModule"}})

    def chosen(value, train_cfg=patterns):
        return pattern_sources(OmegaConf.create({"pattern_sources": value}), train_cfg)

    assert chosen(None) == ("generator", "independent")
    assert chosen(None, digits) == ("generator",)
    assert chosen(["independent", "generator"]) == ("generator", "independent")
    with pytest.raises(UserError, match=r"pattern_sources=\['made_up'\]: choose from"):
        chosen(["made_up"])
    with pytest.raises(UserError, match="pattern_sources=\\['independent'\\] is for pattern"):
        chosen(["independent"], digits)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_evaluate_reports_the_independent_figures_side_by_side(tmp_path, caplog):
    """A tiny class- and mask-conditioned pattern checkpoint, evaluated in-process."""
    run_dir = tmp_path / "run"
    overrides = ["conditioning=inpaint", "conditioning.use_labels=true"]
    cfg = compose_cfg(run_dir, [*overrides, "callbacks.inpaint_validation=null"], tiny=True)
    train(cfg)
    common = [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "n=16", "inpainting.n=8"]
    eval_cfg = compose_cfg(
        tmp_path / "eval",
        [
            *common,
            "metrics=[fid,kid,accuracy,inpainting]",
            "batch_size=16",
            "sampler=ddim",
            "sampler.steps=2",
            "fid.kid_subsets=3",
            "classifier.train_size=64",
            "classifier.epochs=1",
            "classifier.batch_size=32",
        ],
        config_name="evaluate",
    )
    with caplog.at_level(logging.INFO, logger="diffusion_lab"):
        evaluate(eval_cfg)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["pattern_sources"] == ["generator", "independent"]
    for key in ("fid", "kid", "judge_accuracy", "inpaint_acc"):
        assert key in saved and f"independent/{key}" in saved, key
    assert saved["independent/n_real"] == saved["n_real"]  # references of the same size
    assert saved["independent/fid"] != saved["fid"]  # the same samples, another reference
    assert "fid" in saved["independent/real_vs_real"]
    assert "fid" in saved["independent/generator_patterns"]
    assert saved["independent/inpaint_n"] == saved["inpaint_n"] == 8
    families = [k for k in saved if k.startswith("independent/inpaint_acc_family/")]
    assert families and all(0 <= saved[k] <= 1 for k in families)
    assert any(k.startswith("independent/inpaint_acc_mask/") for k in saved)
    table = "| metric | training generator | independent |"
    assert table in (run_dir / "eval.md").read_text()
    assert table in caplog.text and "masked-pixel accuracy" in caplog.text

    # inpainting alone (no plain samples), on the training generator's patterns only
    only = [*common, "metrics=[inpainting]", "pattern_sources=[generator]", "sampler=onepass"]
    results = evaluate(compose_cfg(tmp_path / "b", [*only, "tag=onepass"], config_name="evaluate"))
    assert 0 <= results["inpaint_acc"] <= 1 and "n_samples" not in results
    assert not [k for k in results if k.startswith("independent")]
    md = (run_dir / "eval_onepass.md").read_text()
    assert "| inpaint_acc |" in md and table not in md
