"""A U-Net of Conv -> GroupNorm -> GELU blocks, einops patch pooling.

Downsampling rearranges each 2x2 patch into channels ('b c (h 2) (w 2) -> b (c 4) h w') and a
1x1 conv brings the width to the next level's; upsampling is the mirror image. Time and
condition embeddings are injected at the bottleneck.
"""

import torch
from einops import rearrange
from torch import Tensor, nn

from diffusion_lab.errors import require
from diffusion_lab.models.conditioning import (
    Cond,
    CondEmbedding,
    check_image_size,
    sinusoidal_embedding,
)


class _ConvBlock(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.GroupNorm(groups, out_ch),
            nn.GELU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            nn.GroupNorm(groups, out_ch),
            nn.GELU(),
        )


class _PatchDown(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(4 * in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(rearrange(x, "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2))


class _PatchUp(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, 4 * out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.proj(x), "b (c p1 p2) h w -> b c (h p1) (w p2)", p1=2, p2=2)


class GroupNormGeluStem(nn.Module):
    """What the GroupNorm/GELU U-Nets share: the width checks, the condition embedding, the
    time MLP and the input conv. `stem(x, t, cond)` gives the first features and the embedding."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: tuple[int, ...],
        groups: int,
        time_dim: int,
        num_classes: int,
        attribute_sizes: tuple[int, ...] | list[int],
        mask_conditioning: bool,
        self_condition: bool,
    ) -> None:
        super().__init__()
        check_image_size(image_size, len(channels) - 1)
        for c in channels:
            require(
                c % groups == 0,
                f"model.groups={groups} must divide every width in model.channels={list(channels)}",
            )
        self.in_channels, self.image_size, self.time_dim = in_channels, image_size, time_dim
        self.cond = CondEmbedding.for_images(
            time_dim, in_channels, num_classes, attribute_sizes, mask_conditioning, self_condition
        )
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )
        self.conv_in = nn.Conv2d(in_channels + self.cond.extra_channels, channels[0], 3, padding=1)

    def stem(self, x: Tensor, t: Tensor, cond: Cond | None) -> tuple[Tensor, Tensor]:
        emb = self.cond.add_to(
            self.time_mlp(sinusoidal_embedding(t, self.time_dim).to(x.dtype)), cond
        )
        return self.conv_in(self.cond.extra_input(x, cond)), emb


class GeluUNet(GroupNormGeluStem):
    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: tuple[int, ...] | list[int] = (32, 64, 128),
        groups: int = 8,
        time_dim: int = 128,
        num_classes: int = 0,
        attribute_sizes: tuple[int, ...] | list[int] = (),
        mask_conditioning: bool = False,
        self_condition: bool = False,
    ) -> None:
        channels = tuple(channels)
        super().__init__(
            in_channels, image_size, channels, groups, time_dim, num_classes, attribute_sizes,
            mask_conditioning, self_condition,
        )  # fmt: skip
        self.down_blocks = nn.ModuleList(_ConvBlock(c, c, groups) for c in channels[:-1])
        self.downs = nn.ModuleList(_PatchDown(a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.mid1 = _ConvBlock(channels[-1], channels[-1], groups)
        self.emb_proj = nn.Linear(time_dim, channels[-1])
        self.mid2 = _ConvBlock(channels[-1], channels[-1], groups)
        self.ups = nn.ModuleList(_PatchUp(b, a) for a, b in zip(channels[:-1], channels[1:]))
        self.up_blocks = nn.ModuleList(_ConvBlock(2 * c, c, groups) for c in channels[:-1])
        self.conv_out = nn.Conv2d(channels[0], in_channels, 1)

    def forward(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        h, emb = self.stem(x, t, cond)
        skips = []
        for block, down in zip(self.down_blocks, self.downs):
            h = block(h)
            skips.append(h)
            h = down(h)
        h = self.mid1(h) + self.emb_proj(emb)[:, :, None, None]
        h = self.mid2(h)
        for up, block in zip(reversed(self.ups), reversed(self.up_blocks)):
            h = block(torch.cat([up(h), skips.pop()], dim=1))
        return self.conv_out(h)
