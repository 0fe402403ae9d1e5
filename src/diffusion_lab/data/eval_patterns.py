"""A second red/blue pattern generator, for evaluation only: the 8 families of data/patterns.py
drawn by separate code, with periods, duty cycles, orientations, amplitudes, phases and shapes
outside the training generator's ranges or in combinations it never draws.

A model that learned the families, not just the training generator's parameter ranges, should
score about as well on these as on the training generator's held-out patterns; `evaluate`
reports the two side by side (independent/* in eval.json).

Shared with data/patterns.py: only the family names and label order (FAMILIES), the two colours
and the output format (uint8 [N, 3, H, W], every pixel RED or BLUE, either one the foreground).
No drawing code is shared, and no training code may import this module (import-linter contract
"The independent evaluation patterns never reach training").

Sizes below are in units of a 32 px image (the coordinates are scaled, so a 16 px image shows
the same pattern at half the resolution); each pixel is sampled at its centre.
"""

import math

import torch
from torch import Tensor

from diffusion_lab.data.patterns import BLUE, FAMILIES, RED
from diffusion_lab.errors import require

UNIT = 32.0  # the image side in the units the family parameters are given in


class _Canvas:
    """Per-sample random parameters ([n, 1, 1], broadcasting against the pixel grid) and the
    pixel-centre coordinates x, y ([1, size, size], 0..32 across the image)."""

    def __init__(self, n: int, size: int, g: torch.Generator) -> None:
        self.n, self.g = n, g
        centres = (torch.arange(size, dtype=torch.float32) + 0.5) * (UNIT / size)
        self.y, self.x = (c[None] for c in torch.meshgrid(centres, centres, indexing="ij"))

    def uniform(self, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(self.n, 1, 1, generator=self.g)

    def coin(self, p: float = 0.5) -> Tensor:
        return torch.rand(self.n, 1, 1, generator=self.g) < p

    def pick(self, *values: float) -> Tensor:
        """One of `values` per sample."""
        i = torch.randint(0, len(values), (self.n,), generator=self.g)
        return torch.tensor(values, dtype=torch.float32)[i][:, None, None]

    def turned(
        self, angle: Tensor, ox: Tensor | float, oy: Tensor | float
    ) -> tuple[Tensor, Tensor]:
        """The coordinates shifted by (ox, oy) and turned by `angle` (radians): (along, across)."""
        x, y = self.x + ox, self.y + oy
        c, s = torch.cos(angle), torch.sin(angle)
        return x * c + y * s, y * c - x * s


def _frac(v: Tensor) -> Tensor:
    return v - torch.floor(v)


def _triangle(phase: Tensor) -> Tensor:
    """Triangle wave of period 1 in [-1, 1]."""
    return 1 - 4 * torch.abs(_frac(phase) - 0.5)


def _checkerboard(c: _Canvas) -> Tensor:
    # training: square, axis-aligned cells of 2-8 px. Here: square cells turned 45 degrees
    # (diamonds, side 4.5-6.5 px), or axis-aligned cells 1.8-2.5 times as long as wide
    diamond = c.coin()
    angle = torch.where(diamond, math.pi / 4, 0.0)
    u, v = c.turned(angle, c.uniform(0, 16), c.uniform(0, 16))
    side = c.uniform(4.5, 6.5)
    narrow = c.uniform(3.0, 4.5)
    long = narrow * c.uniform(1.8, 2.5)
    upright = c.coin()
    w = torch.where(diamond, side, torch.where(upright, narrow, long))
    h = torch.where(diamond, side, torch.where(upright, long, narrow))
    return (torch.floor(u / w) + torch.floor(v / h)) % 2 == 1


def _stripes(c: _Canvas) -> Tensor:
    # training: 0/45/90/135 degrees, period 4-12 px, half on. Here: the angles in between
    # (22.5 + k * 45 degrees, +-6), period 13-16 px, 30% or 70% on
    angle = torch.deg2rad(c.pick(22.5, 67.5, 112.5, 157.5) + c.uniform(-6, 6))
    u, _ = c.turned(angle, c.uniform(0, 16), 0.0)
    return _frac(u / c.uniform(13, 16)) < c.pick(0.3, 0.7)


def _grid(c: _Canvas) -> Tensor:
    # training: a square axis-aligned lattice, period 5-11 px, lines 1-2 px. Here: a square
    # lattice turned 45 degrees (period 9-12 px), or an axis-aligned one with oblong cells
    # (12-15 px by 6-8 px); lines 2.5-3.5 px
    turned = c.coin()
    u, v = c.turned(torch.where(turned, math.pi / 4, 0.0), c.uniform(0, 16), c.uniform(0, 16))
    square = c.uniform(9, 12)
    long, short = c.uniform(12, 15), c.uniform(6, 8)
    upright = c.coin()
    pu = torch.where(turned, square, torch.where(upright, short, long))
    pv = torch.where(turned, square, torch.where(upright, long, short))
    width = c.uniform(2.5, 3.5)
    return (_frac(u / pu) * pu < width) | (_frac(v / pv) * pv < width)


def _dots(c: _Canvas) -> Tensor:
    # training: a square lattice, period 5-11 px, radius 22-36% of it. Here: a hexagonal
    # lattice (every other row shifted by half a period), period 10-13 px, radius 38-43% of it
    period = c.uniform(10, 13)
    row_height = period * math.sqrt(3) / 2
    x, y = c.x + c.uniform(0, 16), c.y + c.uniform(0, 16)
    row = torch.floor(y / row_height)
    dy = y - (row + 0.5) * row_height
    dx = (_frac((x + 0.5 * period * (row % 2)) / period) - 0.5) * period
    return dx**2 + dy**2 < (period * c.uniform(0.38, 0.43)) ** 2


def _wavy_bands(c: _Canvas, sine: bool) -> Tensor:
    """Bands that wiggle along one axis (triangle wave: zigzag; sine: waves)."""
    if sine:
        # training: horizontal bands, wavelength 8-16 px, band period 6-12 px half on, each
        # wave starting at x = 0. Here: vertical or diagonal bands, wavelength 17-21 px
        # (amplitude 2.5-3.5 px, band period 7-9 px), 60-65% on, any phase
        angle = torch.deg2rad(c.pick(45.0, 90.0, 135.0))
        wavelength, amplitude = c.uniform(17, 21), c.uniform(2.5, 3.5)
        band, duty = c.uniform(7, 9), c.uniform(0.6, 0.65)
    else:
        # training: horizontal bands, teeth 8-16 px long and 1.5-4 px high, band period
        # 6-12 px half on, each tooth starting at x = 0. Here: vertical bands, teeth 9-11 px
        # long and 4.5-5.5 px high, band period 12-15 px 40% on, any phase
        angle = torch.full((c.n, 1, 1), math.pi / 2)
        wavelength, amplitude = c.uniform(9, 11), c.uniform(4.5, 5.5)
        band, duty = c.uniform(12, 15), c.uniform(0.38, 0.42)
    along, across = c.turned(angle, 0.0, 0.0)
    phase = along / wavelength + c.uniform(0, 1)
    wave = torch.sin(2 * math.pi * phase) if sine else _triangle(phase)
    return _frac((across + amplitude * wave + c.uniform(0, 16)) / band) < duty


def _concentric(c: _Canvas) -> Tensor:
    # training: circles, squares or diamonds around a centre in the middle half of the image,
    # rings 2-5 px wide, half on. Here: ellipses (axes 1.4-1.9 : 1) or octagons around a centre
    # near an edge (up to 2 px beyond it), ring period 10-12 px, 40% on
    near_edge = torch.where(c.coin(), c.uniform(-2, 5), c.uniform(27, 34))
    anywhere = c.uniform(0, UNIT)
    first = c.coin()  # which coordinate sits near the edge
    cx, cy = torch.where(first, near_edge, anywhere), torch.where(first, anywhere, near_edge)
    dx, dy = (c.x - cx).abs(), (c.y - cy).abs()
    stretch = c.uniform(1.4, 1.9)
    wide = c.coin()
    ellipse = torch.hypot(torch.where(wide, dx / stretch, dx), torch.where(wide, dy, dy / stretch))
    octagon = torch.maximum(torch.maximum(dx, dy), (dx + dy) / math.sqrt(2))
    dist = torch.where(c.coin(), ellipse, octagon)
    return _frac(dist / c.uniform(10, 12) + c.uniform(0, 1)) < 0.4


def _geometric(c: _Canvas) -> Tensor:
    # training: 1-4 circles, rectangles or upward triangles of radius 12-30% of the side.
    # Here: rings, plus signs, diamonds and downward triangles; one large (radius 33-40%) or
    # 2-3 medium ones (16-22%)
    single = c.coin(0.4)
    count = torch.where(single, 1, torch.randint(2, 4, (c.n, 1, 1), generator=c.g))
    fg = torch.zeros(c.n, *c.x.shape[1:], dtype=torch.bool)
    for slot in range(3):
        r = torch.where(single, c.uniform(0.33, 0.40), c.uniform(0.16, 0.22)) * UNIT
        margin = torch.where(single, 0.42, 0.2) * UNIT  # large shapes near the middle
        cx = margin + c.uniform(0, 1) * (UNIT - 2 * margin)
        cy = margin + c.uniform(0, 1) * (UNIT - 2 * margin)
        dx, dy = c.x - cx, c.y - cy
        dist = torch.hypot(dx, dy)
        ring = (dist < r) & (dist > r * c.uniform(0.5, 0.6))
        arm = r * 0.32
        plus = ((dx.abs() < arm) & (dy.abs() < r)) | ((dy.abs() < arm) & (dx.abs() < r))
        diamond = dx.abs() + dy.abs() < r
        down = (dy.abs() < r * 0.8) & (dx.abs() < (r * 0.8 - dy) * 0.62)
        kind = torch.randint(0, 4, (c.n, 1, 1), generator=c.g)
        shape = torch.where(
            kind == 0, ring, torch.where(kind == 1, plus, torch.where(kind == 2, diamond, down))
        )
        fg |= shape & (count > slot)
    return fg


# one drawing function per family, in FAMILIES' (= the label) order
_DRAW = (
    _checkerboard,
    _stripes,
    _grid,
    _dots,
    lambda c: _wavy_bands(c, sine=False),
    lambda c: _wavy_bands(c, sine=True),
    _concentric,
    _geometric,
)
assert len(_DRAW) == len(FAMILIES)


def render_eval_patterns(n: int, image_size: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    """n evaluation patterns as (uint8 images [n, 3, image_size, image_size], labels [n]).

    Same format as data.patterns.generate_patterns: every pixel RED or BLUE (which of the two
    is the foreground is a coin flip per image), labels index FAMILIES. Balanced: every family
    gets n // 8 or n // 8 + 1 images, in shuffled order. Deterministic for (n, image_size, seed).
    """
    require(n >= 1, f"render_eval_patterns: n={n} must be >= 1")
    require(image_size >= 8, f"render_eval_patterns: image_size={image_size} must be >= 8")
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % len(FAMILIES))[torch.randperm(n, generator=g)]
    fg = torch.zeros(n, image_size, image_size, dtype=torch.bool)
    for family, draw in enumerate(_DRAW):
        idx = (labels == family).nonzero().squeeze(1)
        if len(idx):
            fg[idx] = draw(_Canvas(len(idx), image_size, g))
    fg ^= (torch.rand(n, generator=g) < 0.5)[:, None, None]  # which colour is the foreground
    red, blue = torch.tensor(RED, dtype=torch.uint8), torch.tensor(BLUE, dtype=torch.uint8)
    images = torch.where(fg[:, None], red[None, :, None, None], blue[None, :, None, None])
    return images.contiguous(), labels
