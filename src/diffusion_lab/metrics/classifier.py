"""A small CNN classifier of a dataset's own images: the offline feature network for FID/KID
and the judge of class accuracy for conditional samples.

Fast on a CPU by design (strided convs, ~0.1M parameters): 10k MNIST images x 3 epochs take
seconds to tens of seconds on 2 cores. Images are float in [-1, 1], [N, C, H, W], any size >= 8.
"""

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.data.loader import to_model_range
from diffusion_lab.errors import require
from diffusion_lab.hardware import fork_rng

log = logging.getLogger("diffusion_lab")


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class AdaptiveAvgPool2d(nn.Module):
    """nn.AdaptiveAvgPool2d's windows as two matrix products: its CUDA backward has no
    deterministic kernel, so training the judge under trainer.deterministic=true would fail."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def _weights(self, n: int, like: Tensor) -> Tensor:
        w = torch.zeros(self.size, n, dtype=like.dtype, device=like.device)
        for i in range(self.size):  # torch's window i: [floor(i n / s), ceil((i + 1) n / s))
            lo, hi = (i * n) // self.size, -(-((i + 1) * n) // self.size)
            w[i, lo:hi] = 1.0 / (hi - lo)
        return w

    def forward(self, x: Tensor) -> Tensor:
        rows, cols = self._weights(x.shape[-2], x), self._weights(x.shape[-1], x)
        return torch.einsum("ih,bchw,jw->bcij", rows, x, cols)


class SmallClassifier(nn.Module):
    """conv 16 -> conv 32 /2 -> conv 64 /2 -> conv 64 -> 4x4 average pool -> linear + ReLU
    (128-d features) -> linear (logits). `features(x)` is what FID/KID compare."""

    feature_dim = 128

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        require(in_channels >= 1, f"classifier in_channels={in_channels} must be >= 1")
        require(image_size >= 8, f"classifier image_size={image_size} must be >= 8")
        require(num_classes >= 2, f"classifier num_classes={num_classes} must be >= 2")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.body = nn.Sequential(
            _block(in_channels, 16, 1),
            _block(16, 32, 2),
            _block(32, 64, 2),
            _block(64, 64, 1),
            # a 4x4 pooled map, not a global average: where the strokes are matters (6 vs 9)
            AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(64 * 16, self.feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """[B, C, H, W] in [-1, 1] -> [B, 128]."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _shift(x: Tensor, g: torch.Generator, max_shift: int) -> Tensor:
    """Random translation by up to max_shift pixels (one offset per batch; cheap augmentation
    that keeps the classifier from keying on exact pixel positions)."""
    if max_shift <= 0:
        return x
    dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=g).tolist()
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    h, w = x.shape[-2:]
    return pad[..., max_shift + dy : max_shift + dy + h, max_shift + dx : max_shift + dx + w]


def _fit(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> SmallClassifier:
    device = images.device
    with fork_rng(device):  # leave the caller's global RNG alone
        torch.manual_seed(seed)
        model = SmallClassifier(images.shape[1], images.shape[-1], num_classes)
    model.to(device)
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    max_shift = max(1, images.shape[-1] // 14)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).to(device)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = _shift(images[idx], g, max_shift)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model


def train_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> SmallClassifier:
    """Train a SmallClassifier on float images in [-1, 1] [N, C, H, W]; returned in eval mode.

    Adam with a one-cycle learning rate (warm-up, then cosine decay), random shifts of up to
    image_size/14 pixels; deterministic for a seed.
    """
    require(images.ndim == 4, f"classifier images must be [N, C, H, W], got {tuple(images.shape)}")
    require(len(images) == len(labels) > 0, "classifier needs as many labels as images (> 0)")
    require(epochs >= 1, f"classifier epochs={epochs} must be >= 1")
    require(batch_size >= 1, f"classifier batch_size={batch_size} must be >= 1")
    images, labels = images.float(), labels.long()
    require(
        int(labels.min()) >= 0 and int(labels.max()) < num_classes,
        f"classifier labels must be in 0..{num_classes - 1}",
    )
    # callable from anywhere, e.g. a Lightning validation hook (inference mode, no grad)
    with torch.inference_mode(False), torch.enable_grad():
        # clone: tensors made under inference mode cannot take part in autograd
        images, labels = images.clone(), labels.clone()
        model = _fit(images, labels, num_classes, epochs, batch_size, lr, seed)
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted class of each image, [N] long."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [
        model(images[i : i + batch_size].float().to(device)).argmax(1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Fraction of images whose predicted class equals the label."""
    require(len(images) == len(labels) > 0, "accuracy needs as many labels as images (> 0)")
    return float((predict(model, images, batch_size) == labels.cpu().long()).float().mean())


def feature_classifier(
    cache_dir: Path, dm, settings: dict[str, Any], device: torch.device, data_id: str = ""
) -> tuple[SmallClassifier, dict[str, Any]]:
    """The dataset's SmallClassifier: loaded from cache_dir/eval/ when trained with the same
    settings on the same data, else trained on dm's training data (and cached); with its
    accuracy on dm's validation images. settings: train_size, epochs, batch_size, lr, seed."""
    meta = {
        "data": data_id or type(dm).__name__,
        "channels": int(dm.channels),
        "image_size": int(dm.image_size),
        "num_classes": int(dm.num_classes),
        "train_size": settings.get("train_size"),
        "epochs": int(settings.get("epochs", 3)),
        "batch_size": int(settings.get("batch_size", 128)),
        "lr": float(settings.get("lr", 1e-3)),
        "seed": int(settings.get("seed", 0)),
    }
    path = Path(cache_dir) / "eval" / "feature_classifier.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("meta") == meta:
            model = SmallClassifier(meta["channels"], meta["image_size"], meta["num_classes"])
            model.load_state_dict(saved["state_dict"])
            log.info("Feature classifier: cached %s", path)
            return model.to(device).eval(), saved["info"]
    train = dm.train_data
    n = len(train["image"])
    if meta["train_size"] is not None:
        n = min(int(meta["train_size"]), n)
    log.info("Training the feature classifier on %d training images (%d epochs)", n, meta["epochs"])
    t0 = time.perf_counter()
    model = train_classifier(
        to_model_range(train["image"][:n]).to(device),
        train["label"][:n].to(device),
        meta["num_classes"],
        epochs=meta["epochs"],
        batch_size=meta["batch_size"],
        lr=meta["lr"],
        seed=meta["seed"],
    )
    val = dm.val_data
    info = {
        "train_images": n,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "val_accuracy": accuracy(model, to_model_range(val["image"]).to(device), val["label"]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": meta, "info": info, "state_dict": model.state_dict()}, path)
    log.info("Feature classifier: val accuracy %.4f, cached in %s", info["val_accuracy"], path)
    return model, info
