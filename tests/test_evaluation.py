"""Evaluation: CLIP scoring / top-k / guidance with a tiny random open_clip model, offline
errors, FID/KID properties, the feature classifier on real MNIST, the evaluate entry point."""

import gzip
import socket
import time

import pytest
import torch

from diffusion_lab.app.build import build_module
from diffusion_lab.data.loader import to_model_range
from diffusion_lab.data.patterns import generate_patterns, generate_patterns_with_info
from diffusion_lab.errors import UserError
from diffusion_lab.metrics.classifier import SmallClassifier, accuracy, train_classifier
from diffusion_lab.metrics.clip_score import (
    ClipScorer,
    clip_guided_generate,
    load_clip,
    to_clip_input,
    top_k_per_class,
)
from diffusion_lab.metrics.fid import (
    INCEPTION_FILE,
    DatasetFeatures,
    FeatureDistance,
    InceptionFeatures,
    inception_weights,
)

from .conftest import SHARED

# a tiny open_clip architecture: random init, built in well under a second
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return load_clip("dlab-test-tiny", architecture=TINY_CLIP)


def test_clip_scores_are_a_softmax_over_prompts_and_topk_picks_the_best(tiny_clip):
    scorer = ClipScorer(tiny_clip)
    gray = torch.rand(12, 1, 28, 28) * 2 - 1  # MNIST-like: 1 channel, another size
    assert to_clip_input(gray, tiny_clip.preprocess).shape == (12, 3, 16, 16)
    labels = torch.arange(12) % 3
    prompts = ["a good handwritten digit {class}", "a blurry image", "a messy scribble"]
    scores = scorer.score(gray, ["0", "1", "2"], prompts, "a digit {class}", labels)
    assert scores.probs.shape == (12, 3)
    assert torch.allclose(scores.probs.sum(1), torch.ones(12), atol=1e-5)
    assert (scores.similarity.abs() <= 1 + 1e-5).all() and scores.similarity.std() > 0
    # the similarity really is the cosine of the two embeddings
    img = scorer.encode_image(gray[:1])
    txt = scorer.encode_text(["a digit 0"])
    assert float(img @ txt.T) == pytest.approx(float(scores.similarity[0]), abs=1e-5)
    # without labels, CLIP's own zero-shot class is used
    assert scorer.score(gray, ["0", "1", "2"], prompts, "a digit {class}").labels.max() <= 2

    values = scores.ranking("0")
    best = top_k_per_class(values, labels, 3, k=2)
    for c in range(3):
        mine = values[labels == c]
        assert torch.equal(values[best[c]], mine.sort(descending=True).values[:2])


def test_top_k_per_class_on_known_values():
    values = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2, 0.8])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    best = top_k_per_class(values, labels, 2, k=2)
    assert best[0].tolist() == [1, 2] and best[1].tolist() == [5, 3]


def test_clip_guidance_changes_the_sample_and_keeps_it_finite(make_cfg, tiny_clip):
    torch.manual_seed(0)
    module = build_module(make_cfg("diffusion.objective=eps"))
    scorer = ClipScorer(tiny_clip)
    score_fn = scorer.similarity_fn(["red and blue stripes"])
    labels = torch.tensor([0, 1, 2, 3])
    sampler = {"name": "ddim", "steps": 3}
    plain = clip_guided_generate(module, score_fn, 4, 0.0, labels, sampler, seed=0)
    # scale 0 is exactly the ordinary sampler
    assert torch.allclose(
        plain, module.generate(4, labels=labels, sampler=sampler, seed=0), atol=1e-5
    )
    guided = clip_guided_generate(module, score_fn, 4, 0.5, labels, sampler, seed=0)
    assert torch.isfinite(guided).all() and guided.abs().max() <= 1
    assert (guided - plain).abs().mean() > 1e-3
    with torch.no_grad():  # it moved towards the prompt
        assert score_fn(guided).mean() > score_fn(plain).mean()


def test_missing_pretrained_tag_offline_is_a_clear_error_within_seconds(tmp_path, monkeypatch):
    t0 = time.perf_counter()
    with pytest.raises(
        UserError,
        match=r"not in the local cache and clip\.download=false.*clip\.pretrained=/path/to/weights",
    ):
        load_clip("ViT-B-32", "openai", download=False, cache_dir=str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(
        UserError, match=r"cannot be downloaded \(no network.*clip\.pretrained=/path/to/weights"
    ):
        load_clip("ViT-B-32", "openai", download=True, cache_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"clip\.pretrained=/nope/w\.bin: no such weights file"):
        load_clip("ViT-B-32", "/nope/w.bin")
    with pytest.raises(
        UserError, match=r"neither a file nor a pretrained tag of ViT-B-32 \(tags: openai"
    ):
        load_clip("ViT-B-32", "no-such-tag")
    with pytest.raises(UserError, match="not an open_clip model config"):
        load_clip("ViT-Z-99")
    assert time.perf_counter() - t0 < 10


def test_clip_weights_file_and_local_dir_load(tmp_path, tiny_clip):
    from diffusion_lab.metrics.domain_clip import save_local_dir

    weights = tmp_path / "w.bin"
    torch.save(tiny_clip.model.state_dict(), weights)
    again = load_clip("dlab-test-tiny", str(weights), architecture=TINY_CLIP)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    a, b = ClipScorer(tiny_clip).encode_image(x), ClipScorer(again).encode_image(x)
    assert torch.allclose(a, b, atol=1e-6)
    save_local_dir(tiny_clip.model, TINY_CLIP, tmp_path / "dir")
    local = load_clip(f"local-dir:{tmp_path / 'dir'}")
    assert torch.allclose(ClipScorer(local).encode_image(x), a, atol=1e-6)
    with pytest.raises(UserError, match="task=train_clip"):
        load_clip(f"local-dir:{tmp_path / 'missing'}")


# ---- FID / KID -------------------------------------------------------------------------------
def _patterns(n: int, seed: int) -> torch.Tensor:
    return to_model_range(generate_patterns(n, 16, seed)[0])


def test_fid_and_kid_are_zero_for_a_set_against_itself_and_large_against_noise():
    real = _patterns(200, 0)
    judge = train_classifier(real, generate_patterns(200, 16, 0)[1], 8, epochs=6, batch_size=32)
    dist = FeatureDistance(DatasetFeatures(judge), kid_subsets=10, kid_subset_size=100)
    dist.add_real(real)
    same = dist.score(real)
    other = dist.score(_patterns(200, 1))  # the same distribution, other samples
    noise = dist.score(torch.rand(200, 3, 16, 16) * 2 - 1)
    assert abs(same["fid"]) < 1e-3
    # KID is an unbiased estimate over random subsets: ~0 within its spread, not exactly 0
    assert abs(same["kid"]) <= 3 * same["kid_std"] and abs(same["kid"]) < 0.1 * noise["kid"]
    assert noise["fid"] > 10 * other["fid"] > 0
    assert noise["kid"] > 10 * max(abs(other["kid"]), other["kid_std"])
    assert noise["kid_subset_size"] == 100
    assert dist.score(_patterns(30, 2))["kid_subset_size"] == 30  # capped by the sample count


def test_inception_features_from_a_weights_file(tmp_path, monkeypatch):
    """The real Inception code path with a weights file (random weights of the right format)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    dummy = tmp_path / "dummy.pth"
    torch.save({}, dummy)
    torch.manual_seed(0)
    state = FeatureExtractorInceptionV3(
        "x", ["64"], feature_extractor_weights_path=str(dummy)
    ).state_dict()
    monkeypatch.undo()
    weights = tmp_path / INCEPTION_FILE
    torch.save(state, weights)

    assert inception_weights(str(weights)) == str(weights)
    feature = InceptionFeatures(inception_weights(str(weights)), feature_dim=64)
    dist = FeatureDistance(feature, kid_subsets=5, kid_subset_size=8)
    gray = torch.rand(8, 1, 16, 16) * 2 - 1  # grayscale goes in as RGB
    dist.add_real(gray)
    assert feature(gray).shape == (8, 64)
    same, white = dist.score(gray)["fid"], dist.score(torch.ones_like(gray))["fid"]
    assert white > 0 and white > 1000 * abs(same)


def test_inception_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(
        UserError,
        match=r"no InceptionV3 weights here and fid\.download=false.*fid\.inception_weights=",
    ):
        inception_weights(None, download=False)
    monkeypatch.setattr(
        socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError())
    )
    with pytest.raises(UserError, match=r"unreachable \(no network\).*fid\.features=dataset"):
        inception_weights(None, download=True)
    with pytest.raises(UserError, match=r"fid\.inception_weights=/nope\.pth: no such file"):
        inception_weights("/nope.pth")
    # a file in torch-fidelity's cache is found without any setting
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / INCEPTION_FILE).write_bytes(b"x")
    assert inception_weights(None).endswith(INCEPTION_FILE)


# ---- the feature classifier -------------------------------------------------------------------
def _mnist(split: str = "t10k") -> tuple[torch.Tensor, torch.Tensor]:
    raw = SHARED / "MNIST" / "raw"
    if not raw.exists():
        pytest.skip(f"{raw} not present")
    data = gzip.open(raw / f"{split}-images-idx3-ubyte.gz").read()[16:]
    images = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(-1, 1, 28, 28)
    labels = torch.frombuffer(
        bytearray(gzip.open(raw / f"{split}-labels-idx1-ubyte.gz").read()[8:]), dtype=torch.uint8
    )
    return to_model_range(images), labels.long()


def test_feature_classifier_learns_real_mnist_from_a_few_hundred_images():
    x, y = _mnist()
    model = train_classifier(x[:800], y[:800], 10, epochs=8, batch_size=32, lr=2e-3)
    assert not model.training
    assert accuracy(model, x[-1000:], y[-1000:]) > 0.90
    assert model.features(x[:4]).shape == (4, SmallClassifier.feature_dim)


def test_feature_classifier_is_deterministic_and_leaves_global_rng_alone():
    x = _patterns(64, 0)
    y = generate_patterns(64, 16, 0)[1]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = train_classifier(x, y, 8, epochs=1, batch_size=16)
    assert torch.equal(torch.rand(1), before)
    b = train_classifier(x, y, 8, epochs=1, batch_size=16)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(UserError, match="labels must be in 0..3"):
        train_classifier(x, y, 4)


# ---- patterns: captions for the domain CLIP ----------------------------------------------------
def test_pattern_info_matches_the_images_and_captions_say_it():
    from diffusion_lab.metrics.domain_clip import caption, family_captions

    images, labels, scale, info = generate_patterns_with_info(400, 32, seed=3)
    assert torch.equal(images, generate_patterns(400, 32, seed=3)[0])  # same images
    red = images[:, 0] > 0  # [n, H, W]
    for i in (labels == 1).nonzero().squeeze(1).tolist():  # stripes
        o = int(info["orientation"][i])
        if o == 0:  # horizontal: every row one colour
            assert (red[i] == red[i][:, :1]).all()
        elif o == 1:  # vertical: every column one colour
            assert (red[i] == red[i][:1, :]).all()
    assert (info["orientation"][labels != 1] == -1).all()
    assert (info["shape"][labels == 6] >= 0).all() and (info["shape"][labels != 6] == -1).all()
    assert caption(1, 0, True, orientation=1) == "red vertical stripes on blue"
    assert caption(0, 1, False) == "blue checkerboard on red"
    assert "a coarse red and blue concentric squares" in family_captions(6)


def test_domain_clip_trains_saves_and_loads(tmp_path):
    from diffusion_lab.metrics.domain_clip import train_domain_clip

    arch = {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "image_size": 16}}
    metrics = train_domain_clip(
        tmp_path / "clip", arch, steps=3, batch_size=16, num_train=64, num_eval=32, warmup_steps=1
    )
    assert 0 <= metrics["zero_shot_family_accuracy"] <= 1 and metrics["steps"] == 3
    assert set(metrics["zero_shot_per_family"]) >= {"checkerboard", "stripes"}
    clip = load_clip(f"local-dir:{tmp_path / 'clip'}")
    assert tuple(clip.preprocess["size"]) == (16, 16) and list(clip.preprocess["mean"]) == [0.5] * 3
    scores = ClipScorer(clip).score(
        _patterns(4, 0),
        ["stripes", "dots"],
        ["a clear image of {class}", "a noisy image of {class}"],
        "{class}",
        torch.tensor([0, 1, 0, 1]),
    )
    assert torch.allclose(scores.probs.sum(1), torch.ones(4), atol=1e-5)
