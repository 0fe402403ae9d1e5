"""A lightweight U-Net of Conv -> GroupNorm -> GELU blocks with learned resampling.

Down: a strided 4x4 conv halves the size and moves to the next width; up: a transposed 4x4
conv doubles it back; the skip of the same size is concatenated before the level's block.
The time (and condition) embedding is added inside every block, after its first conv.
"""

import torch
from torch import Tensor, nn

from diffusion_lab.models.conditioning import Cond
from diffusion_lab.models.gelu_unet import GroupNormGeluStem


class _Block(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, time_dim: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, out_ch)
        self.time_proj = nn.Linear(time_dim, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.act = nn.GELU()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.act(self.norm1(self.conv1(x))) + self.time_proj(emb)[:, :, None, None]
        return self.act(self.norm2(self.conv2(h)))


class LightUNet(GroupNormGeluStem):
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
        pairs = list(zip(channels[:-1], channels[1:]))
        self.down_blocks = nn.ModuleList(_Block(a, a, time_dim, groups) for a, _ in pairs)
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 4, 2, 1) for a, b in pairs)
        self.mid = _Block(channels[-1], channels[-1], time_dim, groups)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(b, a, 4, 2, 1) for a, b in pairs)
        self.up_blocks = nn.ModuleList(_Block(2 * a, a, time_dim, groups) for a, _ in pairs)
        self.conv_out = nn.Conv2d(channels[0], in_channels, 1)

    def forward(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        h, emb = self.stem(x, t, cond)
        skips = []
        for block, down in zip(self.down_blocks, self.downs):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid(h, emb)
        for up, block in zip(reversed(self.ups), reversed(self.up_blocks)):
            h = block(torch.cat([up(h), skips.pop()], dim=1), emb)
        return self.conv_out(h)
