"""Inpainting masks, deterministic per sample from (seed, sample index).

Convention, everywhere in diffusion-lab: 1 = known pixel, 0 = pixel to fill. Masks are
[N, 1, H, W] uint8 tensors (cheap to keep for a whole split; cast where they are used).

Kinds (sizes are fractions of the image side, so they scale with the image):
  center_box         a centred square, side `box_fraction` (default 0.5: a quarter unknown)
  random_boxes       1-3 boxes of side 0.2-0.4, anywhere (overlaps allowed)
  vertical_stripe    a full-height band of width 0.2-0.35 at a random x
  horizontal_stripe  a full-width band of height 0.2-0.35 at a random y
  scattered          each pixel unknown with probability `scatter_fraction` (missing dots)
  half               the left, right, top or bottom half unknown
  image              a user-supplied mask image (`image=path.png`): white = known, black = fill,
                     resized (nearest) to the image size and thresholded at mid-grey

A mixture is a list of kinds; each sample draws one of them from its own seed, so a
training image always gets the same mask and validation masks are reproducible.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffusion_lab.errors import require

MASK_KINDS = (
    "center_box",
    "random_boxes",
    "vertical_stripe",
    "horizontal_stripe",
    "scattered",
    "half",
    "image",
)


@dataclass
class MaskSpec:
    """What masks to draw; built from the `conditioning.masks` config node."""

    kinds: tuple[str, ...] = ("center_box",)
    seed: int = 0
    box_fraction: float = 0.5
    scatter_fraction: float = 0.3
    image: str | None = None
    _image_cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.kinds, str):
            self.kinds = (self.kinds,)
        self.kinds = tuple(self.kinds)
        require(len(self.kinds) > 0, "masks.kinds must list at least one mask kind")
        for k in self.kinds:
            require(k in MASK_KINDS, f"masks.kinds: {k!r} is not one of {list(MASK_KINDS)}")
        require(
            0 < self.box_fraction < 1, f"masks.box_fraction={self.box_fraction} must be in (0, 1)"
        )
        require(
            0 < self.scatter_fraction < 1,
            f"masks.scatter_fraction={self.scatter_fraction} must be in (0, 1)",
        )
        if "image" in self.kinds:
            require(self.image is not None, "masks.kinds has 'image': set masks.image=path.png")
            require(Path(self.image).is_file(), f"masks.image={self.image}: no such file")

    @classmethod
    def from_config(
        cls, node: "Mapping[str, Any] | MaskSpec | None", **defaults: Any
    ) -> "MaskSpec | None":
        if node is None or isinstance(node, MaskSpec):
            return node
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
        values = {**defaults, **{k: v for k, v in dict(node).items() if v is not None}}
        known = {"kinds", "seed", "box_fraction", "scatter_fraction", "image"}
        unknown = sorted(set(values) - known)
        require(not unknown, f"masks: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**values)

    def image_mask(self, size: int) -> np.ndarray:
        if size not in self._image_cache:
            from PIL import Image

            with Image.open(self.image) as im:
                im = im.convert("L").resize((size, size), Image.NEAREST)
                self._image_cache[size] = (np.asarray(im) >= 128).astype(np.uint8)
        return self._image_cache[size]


def _rng(seed: int, index: int) -> np.random.Generator:
    # one independent stream per (seed, index): a sample's mask never depends on the split size
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])


def _span(rng: np.random.Generator, size: int, lo: float, hi: float) -> tuple[int, int]:
    """A random [start, stop) interval of length lo..hi times size inside 0..size."""
    length = max(1, int(round(rng.uniform(lo, hi) * size)))
    start = int(rng.integers(0, size - length + 1))
    return start, start + length


def one_mask(kind: str, size: int, rng: np.random.Generator, spec: MaskSpec) -> np.ndarray:
    """A single [size, size] uint8 mask (1 = known) of one kind."""
    m = np.ones((size, size), dtype=np.uint8)
    if kind == "center_box":
        side = max(1, int(round(spec.box_fraction * size)))
        a = (size - side) // 2
        m[a : a + side, a : a + side] = 0
    elif kind == "random_boxes":
        for _ in range(int(rng.integers(1, 4))):
            y0, y1 = _span(rng, size, 0.2, 0.4)
            x0, x1 = _span(rng, size, 0.2, 0.4)
            m[y0:y1, x0:x1] = 0
    elif kind == "vertical_stripe":
        x0, x1 = _span(rng, size, 0.2, 0.35)
        m[:, x0:x1] = 0
    elif kind == "horizontal_stripe":
        y0, y1 = _span(rng, size, 0.2, 0.35)
        m[y0:y1, :] = 0
    elif kind == "scattered":
        m = (rng.random((size, size)) >= spec.scatter_fraction).astype(np.uint8)
    elif kind == "half":
        h = size // 2
        side = int(rng.integers(0, 4))
        if side == 0:
            m[:, h:] = 0  # right
        elif side == 1:
            m[:, :h] = 0  # left
        elif side == 2:
            m[h:, :] = 0  # bottom
        else:
            m[:h, :] = 0  # top
    elif kind == "image":
        m = spec.image_mask(size).copy()
    else:  # pragma: no cover - MaskSpec validates kinds
        raise ValueError(kind)
    return m


def make_masks(
    spec: MaskSpec, n: int, size: int, start: int = 0, seed_offset: int = 0
) -> tuple[Tensor, Tensor]:
    """Masks for samples start..start+n-1: (uint8 [n, 1, size, size], kind index [n]).

    The kind index points into `spec.kinds`. `seed_offset` separates splits (train/val).
    """
    seed = spec.seed + seed_offset
    out = np.empty((n, 1, size, size), dtype=np.uint8)
    kinds = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = _rng(seed, start + i)
        k = int(rng.integers(0, len(spec.kinds))) if len(spec.kinds) > 1 else 0
        out[i, 0] = one_mask(spec.kinds[k], size, rng, spec)
        kinds[i] = k
    return torch.from_numpy(out), torch.from_numpy(kinds)


def masks_of_kind(kind: str, n: int, size: int, seed: int = 0, **params: Any) -> Tensor:
    """n masks of one kind (uint8 [n, 1, size, size]), e.g. for a benchmark or the sample CLI."""
    spec = MaskSpec(kinds=(kind,), seed=seed, **params)
    return make_masks(spec, n, size)[0]
