"""`python -m diffusion_lab.sample ckpt_path=... n=64`: a PNG grid and a tensor file from a
checkpoint; `mode=inpaint` inpaints (see app/inpaint.py)."""

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from diffusion_lab.app.build import load_module
from diffusion_lab.app.config import command_output_dir, sampling_progress
from diffusion_lab.app.hydra_entry import hydra_entry, run_task
from diffusion_lab.app.inpaint import inpaint
from diffusion_lab.errors import require
from diffusion_lab.files import atomic_write
from diffusion_lab.hardware import pick_device

log = logging.getLogger("diffusion_lab")


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Sample a grid (PNG) and a tensor file (.pt) from a checkpoint (mode=inpaint: inpaint)."""
    mode = cfg.get("mode") or "generate"
    require(mode in ("generate", "inpaint"), f"mode={mode!r} is not one of ['generate', 'inpaint']")
    if mode == "inpaint":
        return inpaint(cfg)
    require(cfg.get("ckpt_path"), "ckpt_path=... is required (a .ckpt file from a training run)")
    module, train_cfg = load_module(cfg.ckpt_path)
    module.to(pick_device(cfg.device))
    n = int(cfg.n)
    require(n >= 1, f"n={n} must be >= 1")
    labels = None
    nrow = int(n**0.5)
    if cfg.get("class") is not None:
        classes = cfg["class"] if OmegaConf.is_list(cfg["class"]) else [cfg["class"]]
        require(all(isinstance(c, int) for c in classes), f"class={list(classes)} must be integers")
        per = max(1, n // len(classes))
        labels = torch.tensor(classes).repeat_interleave(per)
        nrow = per
    elif module.num_classes:
        per = max(1, n // module.num_classes)
        labels = torch.arange(module.num_classes).repeat_interleave(per)  # one row per class
        nrow = per
    attrs = None
    if cfg.get("attributes"):
        values = list(cfg.attributes)
        count = len(labels) if labels is not None else n
        attrs = torch.tensor(values).long()[None].expand(count, -1)
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True) if cfg.get("sampler") else None
    with sampling_progress("Sampling") as step:
        images = module.generate(
            len(labels) if labels is not None else n,
            labels=labels,
            attrs=attrs,
            sampler=sampler,
            guidance_scale=cfg.get("guidance_scale"),
            seed=cfg.seed,
            callback=step,
        )
    out = command_output_dir(cfg)
    png, pt = out / "samples.png", out / "samples.pt"
    with atomic_write(png) as f:  # a kill mid-write leaves no half file
        save_image(
            (images.float().cpu() + 1) / 2, f, format="png", nrow=nrow, padding=1, pad_value=1.0
        )
    with atomic_write(pt) as f:
        torch.save({"images": images.cpu(), "labels": labels, "attrs": attrs}, f)
    log.info("Wrote %s and %s", png, pt)
    return {"png": str(png), "tensor": str(pt), "n": len(images)}


@hydra_entry("sample")
def main(cfg: DictConfig) -> float | None:
    return run_task(sample, cfg)
