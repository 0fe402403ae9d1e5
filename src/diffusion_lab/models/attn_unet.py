"""The pattern-inpainting project's U-Net: residual blocks, time embedding in every block,
multi-head self-attention at chosen resolutions (global context for periodic patterns),
optionally with fixed position embeddings on the attention's queries and keys."""

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from diffusion_lab.errors import require
from diffusion_lab.models.conditioning import (
    Cond,
    CondEmbedding,
    check_image_size,
    sinusoidal_embedding,
)


class NearestUpsample2x(nn.Module):
    """nn.Upsample(scale_factor=2, mode="nearest") as a broadcast: its CUDA backward has no
    deterministic kernel, so training under trainer.deterministic=true on a GPU would fail."""

    def forward(self, x: Tensor) -> Tensor:
        return repeat(x, "b c h w -> b c (h 2) (w 2)")


class _ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.act = nn.ReLU()
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return h + self.skip(x)


def position_embedding(ch: int, res: int) -> Tensor:
    """Fixed sinusoidal embedding of the positions of a res x res grid, [res * res, ch].

    Sines and cosines of the position along four directions (x, y, x + y, x - y) at ch / 8
    wavelengths from 2 to 2 * res cells: the dot product of two embeddings is then a sum of
    cosines of their offset, so attention can learn to look a period away in any of those
    directions (periodic patterns: stripes, checkerboards, dot lattices). Zero-padded to ch."""
    n = max(1, ch // 8)
    wavelengths = torch.logspace(1, torch.log2(torch.tensor(2.0 * res)), n, base=2)
    ys, xs = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    coords = torch.stack([xs, ys, xs + ys, xs - ys], -1).flatten(0, 1).float()  # [res^2, 4]
    angles = 2 * torch.pi * coords[:, :, None] / wavelengths  # [res^2, 4, n]
    emb = torch.cat([angles.sin(), angles.cos()], -1).flatten(1)  # [res^2, 8 n]
    return torch.nn.functional.pad(emb, (0, ch - emb.shape[1]))[:, :ch]


class _SelfAttention(nn.Module):
    def __init__(self, ch: int, heads: int, groups: int, res: int = 0) -> None:
        """res > 0 adds a fixed position embedding of a res x res grid to queries and keys."""
        super().__init__()
        require(
            ch % heads == 0,
            f"model.heads={heads} must divide the width {ch} where attention is used",
        )
        self.norm = nn.GroupNorm(groups, ch)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)
        self.res = res
        if res:  # not persistent: derived from (ch, res), checkpoints stay the same
            self.register_buffer("pos", position_embedding(ch, res)[None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")
        qk = tokens + self.pos.to(tokens.dtype) if self.res else tokens
        out, _ = self.attn(qk, qk, tokens, need_weights=False)
        return x + rearrange(out, "b (h w) c -> b c h w", h=h, w=w)


class AttnUNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        base: int = 32,
        mults: tuple[int, ...] | list[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] | list[int] = (8,),
        heads: int = 4,
        dropout: float = 0.0,
        groups: int = 8,
        position_embedding: bool = False,
        num_classes: int = 0,
        attribute_sizes: tuple[int, ...] | list[int] = (),
        mask_conditioning: bool = False,
        self_condition: bool = False,
    ) -> None:
        super().__init__()
        mults = tuple(mults)
        check_image_size(image_size, len(mults) - 1)
        widths = [base * m for m in mults]
        for w in widths:
            require(w % groups == 0, f"model.groups={groups} must divide every width {widths}")
        self.in_channels, self.image_size = in_channels, image_size
        self.time_dim = base * 4
        self.cond = CondEmbedding.for_images(
            self.time_dim,
            in_channels,
            num_classes,
            attribute_sizes,
            mask_conditioning,
            self_condition,
        )
        self.time_mlp = nn.Sequential(
            nn.Linear(base, self.time_dim), nn.SiLU(), nn.Linear(self.time_dim, self.time_dim)
        )
        self.base = base
        self.conv_in = nn.Conv2d(in_channels + self.cond.extra_channels, base, 3, padding=1)

        def level(in_ch: int, out_ch: int, res: int) -> nn.ModuleList:
            layers = nn.ModuleList()
            for i in range(num_res_blocks):
                layers.append(
                    _ResBlock(in_ch if i == 0 else out_ch, out_ch, self.time_dim, groups, dropout)
                )
            if res in attn_resolutions:
                layers.append(
                    _SelfAttention(out_ch, heads, groups, res if position_embedding else 0)
                )
            return layers

        self.down_levels, self.downsamples = nn.ModuleList(), nn.ModuleList()
        ch, res, skip_chs = base, image_size, []
        for i, w in enumerate(widths):
            self.down_levels.append(level(ch, w, res))
            ch = w
            skip_chs.append(ch)
            if i < len(widths) - 1:
                self.downsamples.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                res //= 2
        self.mid = nn.ModuleList(
            [_ResBlock(ch, ch, self.time_dim, groups, dropout),
             _SelfAttention(ch, heads, groups, res if position_embedding else 0),
             _ResBlock(ch, ch, self.time_dim, groups, dropout)]
        )  # fmt: skip
        self.up_levels, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up_levels.append(level(ch + skip_chs[i], w, res))
            ch = w
            if i > 0:
                self.upsamples.append(
                    nn.Sequential(NearestUpsample2x(), nn.Conv2d(ch, ch, 3, padding=1))
                )
                res *= 2
        self.conv_late = nn.Sequential(
            nn.GroupNorm(groups, ch), nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1)
        )
        self.conv_out = nn.Conv2d(ch, in_channels, 1)

    @staticmethod
    def _run(layers: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for layer in layers:
            h = layer(h, emb) if isinstance(layer, _ResBlock) else layer(h)
        return h

    def forward(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        emb = self.cond.add_to(self.time_mlp(sinusoidal_embedding(t, self.base).to(x.dtype)), cond)
        h = self.conv_in(self.cond.extra_input(x, cond))
        skips = []
        for i, layers in enumerate(self.down_levels):
            h = self._run(layers, h, emb)
            skips.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
        h = self._run(self.mid, h, emb)
        for i, layers in enumerate(self.up_levels):
            h = self._run(layers, torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsamples):
                h = self.upsamples[i](h)
        return self.conv_out(self.conv_late(h))
