"""Synthetic two-colour (red/blue) patterns in 8 families, generated in batches with torch.

Every image holds exactly two colours; each sample carries its family (the class label) and a
"scale" attribute (0 = fine, 1 = coarse: the pattern's period above its family's midpoint).
Deterministic from a seed: the same seed gives the same images.
"""

import math

import torch
from torch import Tensor

FAMILIES = (
    "checkerboard",
    "stripes",
    "grid",
    "dots",
    "zigzag",
    "waves",
    "concentric",
    "geometric",
)
RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _ri(g: torch.Generator, n: int, lo: int, hi: int) -> Tensor:
    """Random integers in [lo, hi] inclusive, as float for broadcasting."""
    return torch.randint(lo, hi + 1, (n,), generator=g).float()


def _family_masks(
    family: int, n: int, size: int, g: torch.Generator, info: dict | None = None
) -> tuple[Tensor, Tensor]:
    """Boolean foreground maps [n, size, size] and the scale attribute [n] for one family.

    `info`, if given, receives the family's discrete parameters (stripe orientation, concentric
    shape) without drawing any extra random numbers."""
    info = {} if info is None else info
    k = size / 32  # parameter ranges are given for 32 px and scaled to the image size
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    x, y = xs[None], ys[None]

    def col(v: Tensor) -> Tensor:
        return v[:, None, None]

    if family == 0:  # checkerboard
        cell = _ri(g, n, max(1, round(2 * k)), max(2, round(8 * k)))
        ox, oy = _u(g, n, 0, 8), _u(g, n, 0, 8)
        fg = (
            torch.floor((x + col(ox)) / col(cell)) + torch.floor((y + col(oy)) / col(cell))
        ) % 2 == 1
        period, mid = cell, (2 + 8) / 2 * k
    elif family == 1:  # stripes: horizontal, vertical, diagonal, anti-diagonal
        period = _ri(g, n, max(2, round(4 * k)), max(3, round(12 * k)))
        orient = torch.randint(0, 4, (n,), generator=g)
        info["orientation"] = orient
        coord = torch.stack([y.expand(n, -1, -1)[0], x[0], x[0] + y[0], x[0] - y[0]])[orient]
        phase = _u(g, n, 0, 12)
        fg = torch.remainder(coord + col(phase), col(period)) < col(period) / 2
        mid = (4 + 12) / 2 * k
    elif family == 2:  # grid lines
        period = _ri(g, n, max(3, round(5 * k)), max(4, round(11 * k)))
        thick = _ri(g, n, 1, max(1, round(2 * k)))
        ox, oy = _u(g, n, 0, 11), _u(g, n, 0, 11)
        fg = (torch.remainder(x + col(ox), col(period)) < col(thick)) | (
            torch.remainder(y + col(oy), col(period)) < col(thick)
        )
        mid = (5 + 11) / 2 * k
    elif family == 3:  # dots on a lattice
        period = _ri(g, n, max(3, round(5 * k)), max(4, round(11 * k)))
        radius = period * _u(g, n, 0.22, 0.36)
        ox, oy = _u(g, n, 0, 11), _u(g, n, 0, 11)
        dx = torch.remainder(x + col(ox), col(period)) - col(period) / 2
        dy = torch.remainder(y + col(oy), col(period)) - col(period) / 2
        fg = dx**2 + dy**2 < col(radius) ** 2
        mid = (5 + 11) / 2 * k
    elif family in (4, 5):  # zigzag (triangle wave) and waves (sine) bands
        period = _ri(g, n, max(4, round(8 * k)), max(5, round(16 * k)))  # along x
        amp = _u(g, n, 1.5, 4.0) * k
        band = _ri(g, n, max(3, round(6 * k)), max(4, round(12 * k)))  # band period along y
        phase = _u(g, n, 0, 16)
        px = x / col(period)
        if family == 4:
            wave = 4 * torch.abs(torch.remainder(px, 1.0) - 0.5) - 1  # triangle in [-1, 1]
        else:
            wave = torch.sin(2 * math.pi * px)
        fg = torch.remainder(y + col(amp) * wave + col(phase), col(band)) < col(band) / 2
        mid = (8 + 16) / 2 * k
    elif family == 6:  # concentric circles, squares or diamonds
        width = _ri(g, n, max(1, round(2 * k)), max(2, round(5 * k)))
        cx, cy = _u(g, n, 0.25, 0.75) * size, _u(g, n, 0.25, 0.75) * size
        dx, dy = (x - col(cx)).abs(), (y - col(cy)).abs()
        shape = torch.randint(0, 3, (n,), generator=g)
        info["shape"] = shape
        dist = torch.stack([(dx**2 + dy**2).sqrt(), torch.maximum(dx, dy), dx + dy], 1)
        dist = dist[torch.arange(n), shape]
        fg = torch.floor(dist / col(width)) % 2 == 0
        period, mid = width, (2 + 5) / 2 * k
    else:  # random geometric shapes: 1-4 circles / rectangles / triangles
        fg = torch.zeros(n, size, size, dtype=torch.bool)
        count = torch.randint(1, 5, (n,), generator=g)
        slots = []
        for slot in range(4):
            on = col((count > slot).float()) > 0
            kind = torch.randint(0, 3, (n,), generator=g)
            cx, cy = _u(g, n, 0.15, 0.85) * size, _u(g, n, 0.15, 0.85) * size
            r = _u(g, n, 0.12, 0.3) * size
            dx, dy = x - col(cx), y - col(cy)
            circle = dx**2 + dy**2 < col(r) ** 2
            rect = (dx.abs() < col(r)) & (dy.abs() < col(r * _u(g, n, 0.4, 1.0)))
            tri = (dy < col(r)) & (dy > -col(r)) & (dx.abs() < (dy + col(r)) / 2)
            shape = torch.stack([circle, rect, tri], 1)[torch.arange(n), kind]
            slots.append(shape & on)
            fg |= slots[-1]
        info["shape_maps"] = torch.stack(slots, 1)  # [n, 4, size, size]: each shape's pixels
        period, mid = r, 0.21 * size
    scale = (period > mid).long()
    return fg, scale


def generate_patterns(
    n: int, size: int = 32, seed: int = 0, families: tuple[int, ...] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """n patterns as (uint8 images [n, 3, size, size], family labels [n], scale attribute [n])."""
    images, labels, scale, _ = generate_patterns_with_info(n, size, seed, families)
    return images, labels, scale


# discrete pattern parameters reported by generate_patterns_with_info (-1 = not applicable)
ORIENTATIONS = ("horizontal", "vertical", "diagonal", "anti-diagonal")
CONCENTRIC_SHAPES = ("circles", "squares", "diamonds")


def generate_patterns_with_info(
    n: int,
    size: int = 32,
    seed: int = 0,
    families: tuple[int, ...] | None = None,
    shape_maps: bool = False,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """generate_patterns plus each sample's parameters (same images for the same seed):
    "red_foreground" (bool: the family's foreground - stripes, dots, lines, rings - is red),
    "orientation" (stripes: index into ORIENTATIONS, else -1), "shape" (concentric: index
    into CONCENTRIC_SHAPES, else -1). Used to caption patterns for the domain CLIP.
    With shape_maps, also "shape_maps": bool [n, 4, size, size], the pixels of each of a
    geometric pattern's (up to 4) shapes (all False for the other families)."""
    g = torch.Generator().manual_seed(seed)
    families = tuple(range(len(FAMILIES))) if families is None else families
    labels = torch.tensor(families)[torch.randint(0, len(families), (n,), generator=g)]
    fg = torch.zeros(n, size, size, dtype=torch.bool)
    scale = torch.zeros(n, dtype=torch.long)
    params = {k: torch.full((n,), -1, dtype=torch.long) for k in ("orientation", "shape")}
    if shape_maps:
        params["shape_maps"] = torch.zeros(n, 4, size, size, dtype=torch.bool)
    for fam in families:
        idx = (labels == fam).nonzero().squeeze(1)
        if len(idx):
            info: dict[str, Tensor] = {}
            fg[idx], scale[idx] = _family_masks(fam, len(idx), size, g, info)
            maps = info.pop("shape_maps", None)
            if maps is not None and shape_maps:
                params["shape_maps"][idx] = maps
            for key, value in info.items():
                params[key][idx] = value
    swap = torch.rand(n, generator=g) < 0.5  # random colour order
    fg = fg ^ swap[:, None, None]
    red, blue = torch.tensor(RED, dtype=torch.uint8), torch.tensor(BLUE, dtype=torch.uint8)
    images = torch.where(fg[:, None], red[None, :, None, None], blue[None, :, None, None])
    params["red_foreground"] = ~swap
    return images.contiguous(), labels, scale, params
