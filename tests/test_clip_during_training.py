"""CLIP scores of samples during training (callbacks=with_eval, metrics [clip]): logged as
eval/clip_* beside eval/fid, the model loaded once, missing weights an error before training."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffusion_lab.app.config import config_dir
from diffusion_lab.app.hydra_entry import check_overrides, run_task
from diffusion_lab.app.reproduce import NOT_CHECKED, compare, load_reference
from diffusion_lab.app.train import train
from diffusion_lab.errors import UserError
from diffusion_lab.metrics.clip_score import prompt_name
from diffusion_lab.training import eval_callback
from diffusion_lab.training.module import DiffusionModule

# a tiny open_clip architecture, randomly initialised (no weights needed)
TINY_CLIP = (
    "clip.architecture={embed_dim:16,"
    "vision_cfg:{image_size:16,layers:1,width:32,head_width:16,patch_size:8},"
    "text_cfg:{context_length:12,vocab_size:49408,width:32,heads:2,layers:1}}"
)
EVAL = [
    "callbacks=with_eval",
    "callbacks.evaluate.metrics=[clip]",
    "callbacks.evaluate.n_samples=8",
    "callbacks.evaluate.batch_size=8",
    "callbacks.evaluate.sampler.steps=2",
]


def test_clip_scores_are_logged_every_n_epochs_with_one_load(make_cfg, tmp_path, monkeypatch):
    loads = []
    real_build = eval_callback.build_clip

    def counting_build(source, device):
        loads.append(source.model)
        return real_build(source, device)

    monkeypatch.setattr(eval_callback, "build_clip", counting_build)
    cfg = make_cfg(
        *EVAL,
        "clip=vit_b32_openai",
        "clip.model=dlab-test-tiny-train",
        "clip.pretrained=null",
        TINY_CLIP,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "callbacks.evaluate.every_n_epochs=1",
    )
    metrics = train(cfg)
    assert loads == ["dlab-test-tiny-train"]  # built at the first evaluation, then reused

    prompts = list(cfg.clip.prompts.patterns)
    keys = ["eval/clip_similarity"] + [f"eval/clip_{prompt_name(p)}" for p in prompts]
    assert "eval/clip_a_clear_image_of_a_red_and_blue_pattern" in keys
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in keys:
        assert key in saved and saved[key] == pytest.approx(metrics[key])
    # each prompt's mean probability over the prompt set: together they sum to 1
    assert sum(saved[k] for k in keys[1:]) == pytest.approx(1, abs=1e-4)
    assert -1 <= saved["eval/clip_similarity"] <= 1
    assert not (tmp_path / "eval" / "feature_classifier.pt").exists()  # no judge for clip alone

    scalars = EventAccumulator(str(tmp_path / "tensorboard")).Reload().Tags()["scalars"]
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    for key in keys:
        assert key in scalars
        assert len(events.Scalars(key)) == 2  # one per epoch


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["clip=vit_b32_openai", "clip.download=false"],
            "clip.pretrained=openai: the ViT-B-32 weights are not in the local cache and "
            "clip.download=false",
        ),
        ([], "callbacks.evaluate.metrics has clip but no CLIP is chosen"),
    ],
)
def test_clip_without_weights_stops_before_training(
    make_cfg, tmp_path, monkeypatch, capsys, args, message
):
    steps = []
    monkeypatch.setattr(
        DiffusionModule, "training_step", lambda self, *a, **k: steps.append(1) or None
    )
    cache = tmp_path / "no_weights_here"
    cache.mkdir()
    extra = [f"clip.cache_dir={cache}"] if args else []
    cfg = make_cfg(*EVAL, *args, *extra, out=tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        run_task(train, cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert steps == []  # not one training step
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_clip_key_without_a_clip_says_what_to_write():
    with pytest.raises(UserError) as error:
        check_overrides("train", ["clip.download=false"])
    assert str(error.value).startswith(
        "clip.download=false: choose a clip first, e.g. clip=domain_patterns clip.download=false"
    )


def test_the_reports_clip_figure_is_never_a_pass():
    ref = load_reference(config_dir() / "reference" / "mnist_class.yaml")
    rows = {r["figure"]: r["verdict"] for r in compare(ref, {"clip_scores": 1.0}, 30)}
    assert rows["clip_scores"].startswith(f"{NOT_CHECKED}: needs pretrained CLIP weights")
