"""Inpainting: RePaint schedule and exactness, mask-conditioned training and sampling, the
accuracy metric, the validation callback and the mode=inpaint sampling entry point."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from diffusion_lab.app.build import build_module
from diffusion_lab.app.sample import sample
from diffusion_lab.app.train import train
from diffusion_lab.data.masks import masks_of_kind
from diffusion_lab.diffusion import GaussianDiffusion, linear_betas
from diffusion_lab.diffusion.repaint import repaint_sample, repaint_schedule
from diffusion_lab.errors import UserError
from diffusion_lab.metrics.inpainting import (
    PALETTE,
    masked_mse_psnr,
    masked_pixel_accuracy,
)
from diffusion_lab.models import Cond

from .conftest import compose_cfg


def two_colour(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 2, (n, size, size), generator=g)
    return PALETTE[idx].permute(0, 3, 1, 2).contiguous()


def test_repaint_schedule_follows_jump_and_resample_counts():
    levels = repaint_schedule(20, jump_length=5, resamples=3)
    steps = list(zip(levels[:-1], levels[1:]))
    assert levels[0] == 0 and levels[-1] == 20
    assert all(b - a in (1, -5) for a, b in steps)
    # levels 5, 10, 15 are each jumped back from twice (resamples - 1)
    assert sum(1 for a, b in steps if b < a) == 3 * 2
    assert sum(1 for a, b in steps if b > a) == 20 + 3 * 2 * 5
    assert repaint_schedule(7, 10, 10) == list(range(8))  # no jumps: plain descent
    assert repaint_schedule(6, 1, 1) == list(range(7))


def test_repaint_keeps_known_pixels_exactly_and_fills_the_rest():
    diffusion = GaussianDiffusion(linear_betas(50), objective="x0")
    known = two_colour(3)
    mask = masks_of_kind("center_box", 3, 8).float()
    calls = []

    def denoise(x, t):  # a "perfect" x0 predictor: all blue
        calls.append(int(t[0]))
        return PALETTE[1][None, :, None, None].expand_as(x)

    g = torch.Generator().manual_seed(0)
    out = repaint_sample(
        diffusion, denoise, known, mask, steps=10, jump_length=2, resamples=3, generator=g
    )
    assert torch.equal(out * mask, known * mask)
    blue = PALETTE[1][None, :, None, None].expand_as(out)
    assert torch.allclose((out * (1 - mask)), blue * (1 - mask), atol=1e-5)
    assert len(calls) == 10 + 4 * 2 * 2  # 4 jump points (2, 4, 6, 8) x 2 resamples x 2 steps


def test_accuracy_is_one_for_a_perfect_fill_and_zero_for_swapped_colours():
    truth = two_colour(4)
    mask = masks_of_kind("half", 4, 8).float()
    assert masked_pixel_accuracy(truth, truth, mask) == 1.0
    swapped = truth.flip(1)  # red <-> blue
    assert masked_pixel_accuracy(swapped, truth, mask) == 0.0
    # a fill wrong only on known pixels is still perfect: only the masked region counts
    assert masked_pixel_accuracy(mask * swapped + (1 - mask) * truth, truth, mask) == 1.0
    # noise smaller than half the colour distance snaps back
    assert (
        masked_pixel_accuracy(truth + 0.3 * torch.randn_like(truth).clamp(-1, 1), truth, mask)
        == 1.0
    )
    mse, psnr = masked_mse_psnr(truth, truth, mask)
    assert mse == 0 and psnr == float("inf")
    mse, psnr = masked_mse_psnr(truth + 0.2 * (1 - mask), truth, mask)
    assert abs(mse - 0.04) < 1e-6 and abs(psnr - 20.0) < 1e-3


def _inpaint_cfg(tmp_path, *extra):
    return compose_cfg(
        tmp_path,
        ["conditioning=inpaint", "data.image_size=8", "model=efficient_unet", *extra],
        tiny=True,
    )


def test_training_logs_inpainting_metrics_and_panel(tmp_path):
    cfg = _inpaint_cfg(tmp_path, "model=attn_unet", "trainer.limit_train_batches=2")
    with open_dict(cfg):
        cfg.callbacks.sample_grid = None
        cfg.callbacks.inpaint_validation.n = 8
    metrics = train(cfg)
    assert metrics["val/loss"] > 0 and 0 <= metrics["val/inpaint_ddim_acc"] <= 1
    assert 0 <= metrics["val/inpaint_onepass_acc_mask/half"] <= 1
    assert 0 <= metrics["val/inpaint_onepass_acc_family/stripes"] <= 1
    assert Path(cfg.paths.output_dir, "samples", "inpaint_final.png").is_file()


@pytest.mark.parametrize("model", ["basic_unet", "efficient_unet", "gelu_unet", "attn_unet"])
def test_every_unet_steps_mask_conditioned_and_pastes_known_pixels(tmp_path, model):
    module = build_module(_inpaint_cfg(tmp_path, f"model={model}"))
    x, mask = two_colour(4), masks_of_kind("random_boxes", 4, 8)
    batch = {"image": x, "label": torch.zeros(4, dtype=torch.long), "mask": mask}
    loss = module._step(batch, "train", module.net)
    loss.backward()
    assert torch.isfinite(loss) and module.net.conv_in.weight.grad.abs().sum() > 0
    known, maskf = x[:3], mask[:3].float()
    for sampler in (
        {"name": "ddim", "steps": 3},
        {"name": "onepass"},
        {"name": "repaint", "steps": 4, "jump_length": 2, "resamples": 2},
    ):
        out = module.generate(3, known=known, mask=maskf, sampler=sampler)
        assert out.shape == (3, 3, 8, 8) and torch.isfinite(out).all()
        assert torch.equal(out * maskf, known * maskf)
        assert not torch.equal(out, known)  # the untrained net does not guess the fill


def test_masked_loss_counts_only_the_pixels_to_fill(tmp_path):
    cfg = _inpaint_cfg(tmp_path)
    module = build_module(cfg)
    x = two_colour(4)
    mask = masks_of_kind("half", 4, 8)
    batch = {"image": x, "label": torch.zeros(4, dtype=torch.long), "mask": mask}
    cond = module.cond_from_batch(batch, drop=True)
    assert torch.equal(cond.mask, mask.float()) and torch.equal(cond.known, x)
    seen = {}

    def fake_losses(model, x0, loss_mask=None, generator=None):
        seen["loss_mask"] = loss_mask
        return torch.ones(len(x0)), torch.zeros(len(x0), dtype=torch.long)

    module.diffusion.training_losses = fake_losses
    module._step(batch, "val", module.net)
    assert torch.equal(seen["loss_mask"], 1 - mask.float())
    module.inpaint_loss = "all"
    module._step(batch, "val", module.net)
    assert seen["loss_mask"] is None


def test_unconditional_model_inpaints_with_repaint(tmp_path):
    module = build_module(
        compose_cfg(tmp_path, ["conditioning=none", "data.image_size=8"], tiny=True)
    )
    known, mask = two_colour(2), masks_of_kind("scattered", 2, 8).float()
    out = module.generate(2, known=known, mask=mask, sampler={"name": "ddim", "steps": 5})
    assert torch.equal(out * mask, known * mask) and torch.isfinite(out).all()


def test_data_attaches_fixed_masks_only_when_asked(tmp_path):
    from diffusion_lab.app.build import build_datamodule

    dm = build_datamodule(_inpaint_cfg(tmp_path))
    dm.setup()
    train_mask = dm.train_data["mask"]
    assert train_mask.shape == (96, 1, 8, 8) and dm.val_data["mask"].shape == (16, 1, 8, 8)
    again = build_datamodule(_inpaint_cfg(tmp_path))
    again.setup()
    assert torch.equal(again.train_data["mask"], train_mask)
    plain = build_datamodule(compose_cfg(tmp_path, ["data.image_size=8"], tiny=True))
    plain.setup()
    assert "mask" not in plain.train_data


def test_sample_mode_inpaint_writes_panels_and_metrics(tmp_path):
    cfg = _inpaint_cfg(tmp_path / "run")
    with open_dict(cfg):
        cfg.callbacks.sample_grid = None
    metrics = train(cfg)
    ckpt = metrics["last_checkpoint"]
    scfg = compose_cfg(
        tmp_path / "s",
        [
            f"ckpt_path={ckpt}",
            "mode=inpaint",
            "n=3",
            "mask=[half,scattered]",
            "sampler=ddim",
            "sampler.steps=2",
        ],
        config_name="sample",
    )
    with open_dict(scfg):
        scfg.output_dir = str(tmp_path / "s")
    out = sample(scfg)
    assert out["n"] == 3 and 0 <= out["acc"] <= 1
    files = sorted(p.name for p in (tmp_path / "s").glob("inpaint_*.png"))
    assert files == ["inpaint_000.png", "inpaint_001.png", "inpaint_002.png", "inpaint_all.png"]
    saved = torch.load(tmp_path / "s" / "inpaint.pt")
    m = saved["mask"]
    assert torch.equal(saved["result"] * m, saved["original"] * m)
    assert "acc" in json.loads((tmp_path / "s" / "inpaint_metrics.json").read_text())


@pytest.mark.parametrize("model", ["efficient_unet", "gelu_unet", "attn_unet"])
def test_self_conditioned_model_refines_its_previous_estimate(tmp_path, model):
    cfg = _inpaint_cfg(tmp_path, f"model={model}", "diffusion.self_condition=true")
    module = build_module(cfg)
    x, mask = two_colour(4), masks_of_kind("half", 4, 8)
    batch = {"image": x, "label": torch.zeros(4, dtype=torch.long), "mask": mask}
    module._step(batch, "train", module.net).backward()
    assert module.net.conv_in.weight.grad.abs().sum() > 0
    seen = []
    net = module.sampling_net  # the EMA copy samples
    net.register_forward_pre_hook(lambda m, args: seen.append(args[2].self_cond))
    known, maskf = x[:2], mask[:2].float()
    one = module.generate(2, known=known, mask=maskf, sampler={"name": "onepass"}, seed=1)
    assert seen == [None]  # the first call has no estimate yet
    seen.clear()
    three = module.generate(
        2, known=known, mask=maskf, sampler={"name": "onepass", "passes": 3}, seed=1
    )
    assert seen[0] is None and all(s is not None for s in seen[1:]) and len(seen) == 3
    assert torch.equal(three * maskf, known * maskf) and not torch.equal(three, one)
    seen.clear()
    module.generate(2, known=known, mask=maskf, sampler={"name": "ddim", "steps": 3})
    assert len(seen) == 3 and torch.is_tensor(seen[2]) and seen[2].shape == (2, 3, 8, 8)


def test_refinement_passes_need_a_self_conditioned_model(tmp_path):
    module = build_module(_inpaint_cfg(tmp_path))
    x, mask = two_colour(2), masks_of_kind("half", 2, 8).float()
    with pytest.raises(UserError, match="sampler.passes=2: more than one pass"):
        module.generate(2, known=x, mask=mask, sampler={"name": "onepass", "passes": 2})
    cond = Cond(mask=mask, known=x, self_cond=x)
    with pytest.raises(UserError, match="built without self-conditioning"):
        module.net(x, torch.zeros(2, dtype=torch.long), cond)
