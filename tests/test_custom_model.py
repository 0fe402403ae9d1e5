"""A user's own network and config folder train, sample and evaluate without touching the
repository (examples/custom_model), through hydra.searchpath."""

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

EXAMPLE = ROOT / "examples" / "custom_model"


def run(cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"diffusion_lab.{module}", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_custom_unet_trains_samples_and_evaluates(tmp_path):
    run_dir = tmp_path / "run"
    train = run(
        EXAMPLE,
        "train",
        f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]",
        "model=tiny_unet",
        "debug=fast",
        "data.image_size=16",
        "data.num_train=32",
        "data.num_val=16",
        "sampler.steps=2",
        "callbacks.sample_grid.n=4",
        f"hydra.run.dir={run_dir}",
    )
    assert train.returncode == 0, train.stderr[-2000:]
    saved = (run_dir / "config.yaml").read_text()
    assert "_target_: my_unet.TinyUNet" in saved
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (run_dir / "samples" / "final.png").is_file()

    sample = run(EXAMPLE, "sample", f"ckpt_path={ckpt}", "n=8", f"output_dir={tmp_path / 's'}")
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert (tmp_path / "s" / "samples.png").is_file()

    evaluate = run(
        EXAMPLE,
        "evaluate",
        f"ckpt_path={ckpt}",
        "metrics=[accuracy]",
        "n=16",
        "batch_size=16",
        "sampler=ddim",
        "sampler.steps=2",
        "classifier.train_size=32",
        "classifier.epochs=1",
        f"output_dir={tmp_path / 'e'}",
    )
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    results = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert 0.0 <= results["accuracy"] <= 1.0


def test_a_model_config_outside_the_search_path_is_one_error_line(tmp_path):
    res = run(EXAMPLE, "train", "model=tiny_unet", "debug=fast")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: model=tiny_unet: no such model")
