"""A BatchNorm/ReLU U-Net pair as one configurable class: "basic" and "efficient".

basic:     channels (64, 128, 256), time embedding 64, no middle conv  (3,712,257 params at 1 ch)
efficient: channels (24, 48, 96), time embedding 192, middle 3x3 conv  (~0.68M params)

Each level: conv3x3 -> ReLU -> BatchNorm -> + time projection -> conv3x3 -> ReLU -> BatchNorm,
then a strided 4x4 conv (down) or a transposed 4x4 conv (up); skips are concatenated.

The FashionMNIST write-up's set-up (docs: Reproductions) differs in four details, each a constructor argument (defaults
keep today's layout, and its checkpoints, unchanged):
  stem_kernel=2             the first conv is 2x2 with padding 1 (28 px -> 29 px; the stride-2
                            convs bring it back to 14 and 7), 120 fewer weights at 24 channels
  conv2_act=False           no ReLU between the second conv and its BatchNorm
  middle_act=False          no ReLU after the middle conv
  time_embedding="interleaved"   sin/cos alternate by index, index i at frequency
                            10000^(-2i/dim) (every index, not every pair, gets its own power)
With all four the efficient net has 678,961 parameters at 1 channel, 28 px.
"""

import math

import torch
from torch import Tensor, nn

from diffusion_lab.errors import require
from diffusion_lab.models.conditioning import (
    Cond,
    CondEmbedding,
    check_image_size,
    sinusoidal_embedding,
)

TIME_EMBEDDINGS = ("halves", "interleaved")


def interleaved_sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[B] -> [B, dim]: column i is sin (even i) or cos (odd i) of t * max_period^(-2i/dim).

    t = 0 gives 0 / 1, as exp(log 0 - ...) = 0 would."""
    i = torch.arange(dim, device=t.device)
    args = t.float()[:, None] * torch.exp(-math.log(max_period) * 2 * i / dim)[None]
    return torch.where(i % 2 == 0, args.sin(), args.cos())


class _Block(nn.Module):
    def __init__(
        self, in_ch: int, out_ch: int, time_dim: int, up: bool, conv2_act: bool = True
    ) -> None:
        super().__init__()
        self.time_proj = nn.Linear(time_dim, out_ch)
        self.conv1 = nn.Conv2d(2 * in_ch if up else in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(out_ch)
        self.norm2 = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU()
        self.act2 = nn.ReLU() if conv2_act else nn.Identity()
        self.resample = (
            nn.ConvTranspose2d(out_ch, out_ch, 4, 2, 1)
            if up
            else nn.Conv2d(out_ch, out_ch, 4, 2, 1)
        )

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        h = self.norm1(self.act(self.conv1(x)))
        h = h + self.act(self.time_proj(t_emb))[:, :, None, None]
        h = self.norm2(self.act2(self.conv2(h)))
        return self.resample(h)


class SimpleUNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: tuple[int, ...] | list[int] = (64, 128, 256),
        time_dim: int = 64,
        middle_conv: bool = False,
        num_classes: int = 0,
        attribute_sizes: tuple[int, ...] | list[int] = (),
        mask_conditioning: bool = False,
        self_condition: bool = False,
        stem_kernel: int = 3,
        conv2_act: bool = True,
        middle_act: bool = True,
        time_embedding: str = "halves",
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        check_image_size(image_size, len(channels) - 1)
        require(
            stem_kernel in (2, 3),
            f"model.stem_kernel={stem_kernel} must be 3 (size-preserving) or 2 (one pixel larger)",
        )
        require(
            time_embedding in TIME_EMBEDDINGS,
            f"model.time_embedding={time_embedding!r} is not one of {list(TIME_EMBEDDINGS)}",
        )
        self.in_channels = in_channels
        self.image_size = image_size
        self.time_dim = time_dim
        self.embed = (
            sinusoidal_embedding if time_embedding == "halves" else interleaved_sinusoidal_embedding
        )
        self.cond = CondEmbedding(
            time_dim,
            num_classes,
            attribute_sizes,
            mask_channels=in_channels + 1 if mask_conditioning else 0,
            self_cond_channels=in_channels if self_condition else 0,
        )
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.ReLU())
        self.conv_in = nn.Conv2d(
            in_channels + self.cond.extra_channels, channels[0], stem_kernel, padding=1
        )
        self.downs = nn.ModuleList(
            _Block(channels[i], channels[i + 1], time_dim, up=False, conv2_act=conv2_act)
            for i in range(len(channels) - 1)
        )
        self.middle = (
            nn.Sequential(
                nn.Conv2d(channels[-1], channels[-1], 3, padding=1),
                nn.ReLU() if middle_act else nn.Identity(),
            )
            if middle_conv
            else nn.Identity()
        )
        rev = channels[::-1]
        self.ups = nn.ModuleList(
            _Block(rev[i], rev[i + 1], time_dim, up=True, conv2_act=conv2_act)
            for i in range(len(rev) - 1)
        )
        self.conv_out = nn.Conv2d(channels[0], in_channels, 1)

    def forward(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        t_emb = self.cond.add_to(self.time_mlp(self.embed(t, self.time_dim).to(x.dtype)), cond)
        h = self.conv_in(self.cond.extra_input(x, cond))
        skips = []
        for block in self.downs:
            h = block(h, t_emb)
            skips.append(h)
        h = self.middle(h)
        for block in self.ups:
            h = block(torch.cat([h, skips.pop()], dim=1), t_emb)
        return self.conv_out(h)
