"""Every model x conditioning trains and samples with both samplers; CFG identities; experiments."""

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from diffusion_lab.app.build import build_module
from diffusion_lab.app.train import train
from diffusion_lab.diffusion import ImageNoise, sample
from diffusion_lab.diffusion.guidance import bind
from diffusion_lab.errors import UserError
from diffusion_lab.models import Cond

from .conftest import CONF

MODELS = ["basic_unet", "efficient_unet", "gelu_unet", "attn_unet"]
CONDITIONINGS = ["none", "class", "class_cfg", "attributes"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_model_x_conditioning_trains_and_samples(make_cfg, model, conditioning, tmp_path):
    overrides = [
        f"model={model}",
        f"conditioning={conditioning}",
        "data.image_size=8",
        "trainer.limit_train_batches=2",
    ]
    if conditioning == "attributes":
        overrides.append("conditioning.attributes=[scale]")
    cfg = make_cfg(*overrides)
    with open_dict(cfg):
        cfg.callbacks.sample_grid = None  # sampled below instead
    train(cfg)
    module = build_module(cfg)
    kw = {}
    if module.num_classes:
        kw["labels"] = torch.tensor([0, 7])
    for sampler in ({"name": "ddpm"}, {"name": "ddim", "steps": 4, "eta": 0.5}):
        x = module.generate(2, sampler=sampler, **kw)
        assert x.shape == (2, 3, 8, 8) and torch.isfinite(x).all()


def _tiny_class_module(make_cfg, objective="eps"):
    cfg = make_cfg(
        "conditioning=class_cfg", "data.image_size=8", f"diffusion.objective={objective}"
    )
    module = build_module(cfg)
    # make the label matter: random embeddings instead of the zero-ish init
    torch.nn.init.normal_(module.net.cond.label_embedding.weight, std=3.0)
    return module


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_cfg_scale_zero_and_one_reproduce_unconditional_and_conditional(make_cfg, objective):
    module = _tiny_class_module(make_cfg, objective)
    labels = torch.tensor([1, 2, 3])
    opts = {"name": "ddim", "steps": 5, "eta": 0.0}
    w0 = module.generate(3, labels=labels, sampler=opts, guidance_scale=0.0)
    w1 = module.generate(3, labels=labels, sampler=opts, guidance_scale=1.0)
    w3 = module.generate(3, labels=labels, sampler=opts, guidance_scale=3.0)
    net = module.sampling_net.eval()

    def plain(cond):  # the sampler called directly with one branch, same seed as generate()
        g = ImageNoise(0, range(3))
        return sample(module.diffusion, bind(net, cond), (3, 3, 8, 8), generator=g, **opts).clamp(
            -1, 1
        )

    assert torch.equal(w0, plain(Cond(labels=torch.full((3,), 8))))  # 8 = the null label
    assert torch.equal(w1, plain(Cond(labels=labels)))
    assert not torch.allclose(w1, w3) and not torch.allclose(w0, w1)


def test_cfg_drops_labels_to_the_null_token_during_training(make_cfg):
    module = _tiny_class_module(make_cfg)
    batch = {"image": torch.zeros(2000, 3, 8, 8), "label": torch.zeros(2000, dtype=torch.long)}
    cond = module.cond_from_batch(batch, drop=True)
    dropped = (cond.labels == 8).float().mean().item()
    assert 0.07 < dropped < 0.13  # p_uncond = 0.1
    assert (module.cond_from_batch(batch, drop=False).labels == 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": torch.tensor([8])}, "outside the trained range 0..7"),
        ({"labels": torch.tensor([-1])}, "outside the trained range"),
    ],
)
def test_bad_sampling_requests_fail_before_sampling(make_cfg, kwargs, message):
    module = _tiny_class_module(make_cfg)
    with pytest.raises(UserError, match=message):
        module.generate(1, **kwargs)


def test_guidance_on_an_unconditional_model_is_an_error(make_cfg):
    module = build_module(make_cfg("conditioning=none", "data.image_size=8"))
    with pytest.raises(UserError, match="needs a class- or attribute-conditioned model"):
        module.generate(1, guidance_scale=3.0)
    with pytest.raises(UserError, match="trained without class conditioning"):
        module.generate(1, labels=torch.tensor([0]))


def test_attribute_the_data_does_not_have_is_an_error(make_cfg):
    with pytest.raises(UserError, match="'thickness' is not provided by PatternDataModule"):
        train(make_cfg("conditioning=attributes"))


def test_gelu_groups_must_divide_widths(make_cfg):
    with pytest.raises(UserError, match="model.groups=3 must divide"):
        build_module(make_cfg("model=gelu_unet", "model.groups=3"))


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_runs_a_fast_dev_run(
    make_cfg, experiment, mnist_root, fashion_root, cifar_batches
):
    probe = make_cfg(f"experiment={experiment}", tiny=False)
    target = probe.data._target_
    # debug=fast's 2 batches run with every experiment (patterns_inpaint validates every 750)
    assert (
        make_cfg(f"experiment={experiment}", "debug=fast", tiny=False).trainer.get(
            "val_check_interval"
        )
        is None
    )
    roots = {
        "MNISTDataModule": mnist_root,
        "FashionMNISTDataModule": fashion_root,
        "CIFAR10DataModule": cifar_batches,
    }
    extra = [f"data.root={roots[k]}" for k in roots if target.endswith("." + k)]
    cfg = make_cfg(f"experiment={experiment}", *extra, "data.image_size=8")
    metrics = train(cfg)
    assert metrics["global_step"] == 3 and metrics["val/loss"] > 0
    assert Path(cfg.paths.output_dir, "samples", "final.png").is_file()


def test_guidance_without_label_dropout_is_an_error(make_cfg):
    """conditioning=class trains no null token: guiding with it ruins the samples."""
    module = build_module(make_cfg("conditioning=class", "data.image_size=8"))
    with pytest.raises(
        UserError, match=r"guidance_scale=3.0: this model was trained without label dropout"
    ):
        module.generate(1, guidance_scale=3.0)
    assert (
        module.generate(1, guidance_scale=1.0, sampler={"name": "ddim", "steps": 2}).shape[0] == 1
    )
