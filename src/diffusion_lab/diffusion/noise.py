"""Where a sampler's Gaussian noise comes from.

A sampler asks its noise source for "one draw shaped like x" (the starting x_T, then whatever
each step needs). `ImageNoise` gives every image its own generator, seeded from (seed, image
index), so image i gets the same draws whether it is sampled alone, in a batch of 16 or in a
batch of 64. `SequentialNoise` draws the whole batch from one torch.Generator, as samplers
did before; it is what a bare `generator=` argument means.
"""

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch
from torch import Tensor


class Noise(Protocol):
    def __call__(self, like: Tensor) -> Tensor:
        """Standard normal noise with the shape, device and dtype of `like`."""
        ...


def image_seed(seed: int, index: int) -> int:
    """The generator seed of image `index` under base seed `seed` (a hash, so that seeds
    s and s + 1 do not share images shifted by one)."""
    state = np.random.SeedSequence([int(seed) & (2**63 - 1), int(index)]).generate_state(
        1, dtype=np.uint64
    )[0]
    return int(state) & (2**63 - 1)


class ImageNoise:
    """Noise for a batch of images, each drawn from its own generator seeded by (seed, index)."""

    def __init__(self, seed: int, indices: Iterable[int], device: torch.device | str = "cpu"):
        self.seed = int(seed)
        self.indices = list(indices)
        self.device = torch.device(device)
        self.generators = [
            torch.Generator(device=self.device).manual_seed(image_seed(self.seed, i))
            for i in self.indices
        ]

    def __call__(self, like: Tensor) -> Tensor:
        if len(like) != len(self.generators):
            raise ValueError(f"noise for {len(self.generators)} images asked for {len(like)}")
        shape = tuple(like.shape[1:])
        return torch.stack(
            [
                torch.randn(shape, generator=g, device=self.device, dtype=like.dtype)
                for g in self.generators
            ]
        ).to(like.device)


class SequentialNoise:
    """The whole batch from one generator (None: torch's global one)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def __call__(self, like: Tensor) -> Tensor:
        device = self.generator.device if self.generator is not None else like.device
        out = torch.randn(
            tuple(like.shape), generator=self.generator, device=device, dtype=like.dtype
        )
        return out.to(like.device)


def as_noise(noise: Noise | torch.Generator | None) -> Noise:
    """A noise source from what a caller passed: a Noise, a torch.Generator or None."""
    if noise is None or isinstance(noise, torch.Generator):
        return SequentialNoise(noise)
    return noise
