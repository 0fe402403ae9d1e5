"""A user's own denoiser, trained by diffusion-lab without changing the repository.

What diffusion-lab needs from a network (src/diffusion_lab/models/contract.py says it in full):
- a constructor that takes in_channels, image_size, num_classes, attribute_sizes,
  mask_conditioning and self_condition (diffusion-lab fills them from the data and
  conditioning configs) plus your own keys from the model config;
- attributes in_channels, image_size and cond (a CondEmbedding: what it can be conditioned on);
- forward(x_t, t, cond) -> a tensor shaped like x_t (eps, x0 or v, as diffusion.objective says).
"""

import torch
from torch import Tensor, nn

from diffusion_lab.models.conditioning import Cond, CondEmbedding, sinusoidal_embedding


class TinyUNet(nn.Module):
    """One down-sampling level, the time (+ class) embedding added in the middle."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        width: int = 16,
        num_classes: int = 0,
        attribute_sizes: tuple[int, ...] = (),
        mask_conditioning: bool = False,
        self_condition: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.image_size, self.width = in_channels, image_size, width
        self.cond = CondEmbedding.for_images(
            width, in_channels, num_classes, attribute_sizes, mask_conditioning, self_condition
        )
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU())
        self.inp = nn.Conv2d(in_channels + self.cond.extra_channels, width, 3, padding=1)
        self.down = nn.Conv2d(width, width, 4, 2, 1)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.up = nn.ConvTranspose2d(width, width, 4, 2, 1)
        self.out = nn.Conv2d(2 * width, in_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        emb = self.cond.add_to(self.time(sinusoidal_embedding(t, self.width).to(x.dtype)), cond)
        h0 = torch.relu(self.inp(self.cond.extra_input(x, cond)))
        h = torch.relu(self.down(h0)) + emb[:, :, None, None]
        h = self.up(torch.relu(self.mid(h)))
        return self.out(torch.cat([h, h0], dim=1))
