"""The evaluate entry point end to end (tiny checkpoint, tiny random CLIP) and the training
callback that evaluates every N epochs."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from diffusion_lab.app.evaluate import evaluate, run
from diffusion_lab.app.hydra_entry import run_task
from diffusion_lab.app.train import train
from diffusion_lab.data.patterns import FAMILIES

from .conftest import ROOT, compose_cfg

TINY_CLIP = (
    "clip.architecture={embed_dim:16,"
    "vision_cfg:{image_size:16,layers:1,width:32,head_width:16,patch_size:8},"
    "text_cfg:{context_length:12,vocab_size:49408,width:32,heads:2,layers:1}}"
)
FAST_EVAL = [
    "n=24",
    "batch_size=12",
    "sampler=ddim",
    "sampler.steps=3",
    "fid.kid_subsets=5",
    "classifier.train_size=96",
    "classifier.epochs=1",
    "classifier.batch_size=32",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny class-conditional pattern model: run/checkpoints/last.ckpt."""
    run_dir = tmp_path_factory.mktemp("run")
    train(compose_cfg(run_dir, [], tiny=True))
    return run_dir


def test_evaluate_writes_json_markdown_topk_and_tensorboard(tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    cfg = compose_cfg(
        tmp_path,
        [
            f"ckpt_path={ckpt}",
            "metrics=[fid,kid,clip,accuracy]",
            "clip.model=dlab-test-tiny-run",
            "clip.pretrained=null",
            TINY_CLIP,
            "clip.top_k=2",
            "tag=t1",
            *FAST_EVAL,
        ],
        config_name="evaluate",
    )
    results = evaluate(cfg)
    saved = json.loads((tiny_run / "eval_t1.json").read_text())  # in the checkpoint's run dir
    for key in ("fid", "kid", "kid_std", "accuracy", "clip_similarity", "seconds_per_1000_samples"):
        assert key in saved and saved[key] == pytest.approx(results[key])
    assert saved["fid"] > 0 and 0 <= saved["accuracy"] <= 1
    assert saved["n_samples"] == 24 and saved["sampler"]["steps"] == 3
    assert saved["feature_network"].startswith("dataset classifier")
    assert 0 <= saved["classifier"]["val_accuracy"] <= 1
    assert abs(sum(saved["clip_prompt_probs"].values()) - 1) < 1e-4
    # the pattern set's second opinion: CLIP's zero-shot family (3 samples of each family)
    per_family = saved["clip_family_accuracy_per_family"]
    assert len(per_family) == 8 and 0 <= saved["clip_family_accuracy"] <= 1
    assert sum(per_family.values()) / 8 == pytest.approx(saved["clip_family_accuracy"], abs=1e-3)
    # the judge's accuracy per family: 3 samples each, averaging to the overall figure
    by_class = saved["accuracy_per_class"]
    assert sorted(by_class) == sorted(FAMILIES)
    assert sum(by_class.values()) / 8 == pytest.approx(saved["accuracy"], abs=1e-6)
    md = (tiny_run / "eval_t1.md").read_text()
    assert "| fid |" in md and "dataset classifier" in md and "| clip_family_accuracy |" in md
    assert "| accuracy[checkerboard] |" in md

    # every sample in the CSV, k per class selected, the selected ones are the class's best
    with open(saved["scores_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24
    assert sum(int(r["selected"]) for r in rows) == 8 * 2  # 8 pattern families x top 2
    prompt_col = next(k for k in rows[0] if k.startswith("p["))
    for c in range(8):
        mine = [r for r in rows if int(r["class"]) == c]
        kept = min(float(r[prompt_col]) for r in mine if r["selected"] == "1")
        dropped = [float(r[prompt_col]) for r in mine if r["selected"] == "0"]
        assert all(kept >= d for d in dropped)
    assert (tiny_run / "clip_t1" / "top_k.png").stat().st_size > 0

    tb = tiny_run / "tensorboard" / "eval_t1"
    tags = {
        v.tag
        for f in tb.glob("events.*")
        for e in EventFileLoader(str(f)).Load()
        for v in e.summary.value
    }
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= tags  # the hparams view
    assert {"eval/fid", "eval/accuracy"} <= set(
        EventAccumulator(str(tb)).Reload().Tags()["scalars"]
    )

    # the judge classifier is cached: a second evaluation reuses it
    cached = tiny_run / "eval" / "feature_classifier.pt"
    stamp = cached.stat().st_mtime_ns
    evaluate(
        compose_cfg(
            tmp_path / "b",
            [f"ckpt_path={ckpt}", "metrics=[accuracy]", *FAST_EVAL],
            config_name="evaluate",
        )
    )
    assert cached.stat().st_mtime_ns == stamp


def test_clip_guide_task(tiny_run, tmp_path):
    cfg = compose_cfg(
        tmp_path,
        [
            "task=clip_guide",
            f"ckpt_path={tiny_run / 'checkpoints' / 'last.ckpt'}",
            "clip.model=dlab-test-tiny-guide",
            "clip.pretrained=null",
            TINY_CLIP,
            "guide.n_per_class=2",
            "guide.scale=0.5",
            "sampler=ddim",
            "sampler.steps=3",
            f"output_dir={tmp_path}",
        ],
        config_name="evaluate",
    )
    out = run(cfg)
    assert out["mean_abs_change"] > 1e-3
    assert out["similarity_guided"] > out["similarity_unguided"]
    assert (tmp_path / "clip_guided.png").stat().st_size > 0


def test_evaluate_bad_input(tiny_run, tmp_path, capsys):
    for args, message in (
        (["ckpt_path=/nonexistent.ckpt"], "ckpt_path=/nonexistent.ckpt: no such file"),
        (
            [f"ckpt_path={tiny_run}/checkpoints/last.ckpt", "metrics=[fid,bleu]"],
            "metrics: ['bleu'] not known",
        ),
        (["task=dance"], "task='dance' is not one of"),
        (
            [
                f"ckpt_path={tiny_run}/checkpoints/last.ckpt",
                "metrics=[clip]",
                "clip.download=false",
                "n=2",
                "sampler=ddim",
                "sampler.steps=2",
                "clip.cache_dir=" + str(tmp_path),
            ],
            "not in the local cache and clip.download=false",
        ),
    ):
        cfg = compose_cfg(tmp_path, args, config_name="evaluate")
        with pytest.raises(SystemExit) as exit_info:
            run_task(run, cfg)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_evaluate_command_line(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffusion_lab.evaluate",
            "ckpt_path=/nonexistent.ckpt",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    assert res.returncode == 2
    assert res.stderr.strip() == "error: ckpt_path=/nonexistent.ckpt: no such file"


def test_training_callback_evaluates_every_n_epochs(make_cfg, tmp_path):
    cfg = make_cfg(
        "callbacks=with_eval",
        "trainer.max_epochs=2",
        "callbacks.evaluate.every_n_epochs=1",
        "callbacks.evaluate.metrics=[fid,kid,accuracy]",
        "callbacks.evaluate.n_samples=16",
        "callbacks.evaluate.n_real=16",
        "callbacks.evaluate.kid_subsets=3",
        "callbacks.evaluate.sampler.steps=2",
        "callbacks.evaluate.classifier.train_size=64",
        "callbacks.evaluate.classifier.epochs=1",
    )
    metrics = train(cfg)
    for key in ("eval/fid", "eval/kid", "eval/accuracy"):
        assert key in metrics, metrics.keys()
    assert metrics["eval/fid"] > 0
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert len(events.Scalars("eval/fid")) == 2  # one per epoch
    assert (tmp_path / "eval" / "feature_classifier.pt").is_file()
    assert (
        torch.load(tmp_path / "eval" / "feature_classifier.pt", weights_only=False)["meta"][
            "train_size"
        ]
        == 64
    )
