"""`python -m diffusion_lab.sample mode=inpaint`: inpaint dataset images or a folder with a
checkpoint, and score the result. Mask convention: 1 = known pixel, 0 = pixel to fill."""

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor
from torchvision.utils import save_image

from diffusion_lab.app.build import build_datamodule, load_module
from diffusion_lab.app.config import command_output_dir, sampling_progress
from diffusion_lab.data.datamodules import PatternDataModule
from diffusion_lab.data.loader import to_model_range
from diffusion_lab.data.masks import MaskSpec, make_masks
from diffusion_lab.data.patterns import FAMILIES
from diffusion_lab.errors import require
from diffusion_lab.files import atomic_write
from diffusion_lab.hardware import pick_device
from diffusion_lab.training.callbacks import write_json
from diffusion_lab.training.inpaint_callback import mask_as_image, masked_input, panel_rows, score

log = logging.getLogger("diffusion_lab")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_folder(folder: Path, n: int, channels: int, size: int) -> tuple[Tensor, list[str]]:
    """Up to n images (sorted by path) as [n, C, size, size] in [-1, 1], resized and centre-cropped."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import v2

    require(folder.is_dir(), f"input={folder} is not a directory (or use input=dataset)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
    require(len(files) > 0, f"input={folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    tf = v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(tf(im.convert("L" if channels == 1 else "RGB")))
        except (UnidentifiedImageError, OSError) as e:
            require(False, f"cannot read image {f}: {e.__class__.__name__}")
    return to_model_range(torch.stack(out)), [f.stem for f in files]


def dataset_inputs(
    train_cfg: DictConfig, n: int, data_root: str | None = None
) -> tuple[Tensor, Tensor, bool]:
    """The first n validation images of the data the checkpoint was trained on."""
    cfg = train_cfg.copy()
    with open_dict(cfg):
        cfg.data.masks = None  # the masks come from the sampling config
        cfg.data.attributes = []
        if data_root:
            cfg.data.root = data_root
    dm = build_datamodule(cfg)
    dm.setup("validate")
    val = dm.val_data
    return to_model_range(val["image"][:n]), val["label"][:n], isinstance(dm, PatternDataModule)


def inpaint(cfg: DictConfig) -> dict[str, Any]:
    """Inpaint images from a folder or from the checkpoint's dataset; one PNG per image
    (original | masked input | mask | result), an overview grid, a tensor file and metrics."""
    require(cfg.get("ckpt_path"), "ckpt_path=... is required (a .ckpt file from a training run)")
    module, train_cfg = load_module(cfg.ckpt_path)
    device = pick_device(cfg.device)
    module.to(device)
    n = int(cfg.n)
    require(n >= 1, f"n={n} must be >= 1")
    c, size = module.sampling_net.in_channels, module.sampling_net.image_size
    source = cfg.get("input") or "dataset"
    labels, two_colour = None, False
    if source == "dataset":
        images, labels, two_colour = dataset_inputs(train_cfg, n, cfg.get("data_root"))
        names = [f"{i:03d}" for i in range(len(images))]
    else:
        images, names = read_folder(Path(str(source)), n, c, size)
    if len(images) < n:
        log.warning(
            "n=%d, but input=%s has %d images: inpainting %d", n, source, len(images), len(images)
        )
    n = len(images)
    kinds = cfg.get("mask") or "center_box"
    kinds = list(kinds) if OmegaConf.is_list(kinds) else [kinds]
    require(
        not cfg.get("mask_image") or "image" in kinds,
        f"mask_image={cfg.mask_image} is used with mask=image only (mask={cfg.mask}); "
        "add mask=image to inpaint with it",
    )
    spec = MaskSpec(kinds=tuple(kinds), seed=int(cfg.seed), image=cfg.get("mask_image"))
    masks, kind_idx = make_masks(spec, n, size)
    masks = masks.float()
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True) if cfg.get("sampler") else None
    with sampling_progress("Inpainting") as step:
        result = module.generate(
            n,
            labels=labels if module.num_classes else None,
            known=images,
            mask=masks,
            sampler=sampler,
            seed=int(cfg.seed),
            callback=step,
        ).cpu()
    out = command_output_dir(cfg)
    grid = panel_rows([images, masked_input(images, masks), mask_as_image(masks), result])
    for i, name in enumerate(names):
        with atomic_write(out / f"inpaint_{name}.png") as f:  # a kill leaves no half file
            save_image(grid[4 * i : 4 * i + 4], f, format="png", nrow=4, padding=1, pad_value=1.0)
    with atomic_write(out / "inpaint_all.png") as f:
        save_image(grid, f, format="png", nrow=4, padding=1, pad_value=1.0)
    with atomic_write(out / "inpaint.pt") as f:
        torch.save({"original": images, "mask": masks, "result": result, "names": names}, f)
    metrics = score(
        result,
        images,
        masks,
        two_colour,
        labels if two_colour else None,
        FAMILIES if two_colour else (),
        kind_idx,
        spec.kinds,
    )
    metrics["n"] = n
    write_json(out / "inpaint_metrics.json", metrics)
    log.info("Wrote %d inpainting panels, inpaint_all.png and inpaint_metrics.json to %s", n, out)
    return {"dir": str(out), "n": n, **{k: v for k, v in metrics.items() if "/" not in k}}
