"""The one conditioning interface shared by every denoiser: `model(x_t, t, cond)`."""

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from diffusion_lab.errors import require


@dataclass
class Cond:
    """What a denoiser may be conditioned on; every field is optional.

    labels: [B] class indices; the value `num_classes` is the learned "no label" (null) token
        used by classifier-free guidance.
    attrs: [B, A] indices of extra categorical attributes (e.g. stroke thickness).
    mask: [B, 1, H, W], 1 = known pixel, 0 = pixel to fill (inpainting).
    known: [B, C, H, W], the image whose pixels under mask == 1 are known.
    self_cond: [B, C, H, W], the x0 the network predicted at the sampler's previous step
        (self-conditioning, Chen et al. 2022); None reads as zeros, "no estimate yet".
    """

    labels: Tensor | None = None
    attrs: Tensor | None = None
    mask: Tensor | None = None
    known: Tensor | None = None
    self_cond: Tensor | None = None

    def batch_slice(self, idx: slice | Tensor) -> "Cond":
        return Cond(**{k: (v[idx] if v is not None else None) for k, v in self.__dict__.items()})

    def to_null(
        self, num_classes: int, attribute_sizes: tuple[int, ...], where: Tensor | None = None
    ) -> "Cond":
        """Labels and attributes replaced by their null tokens (the value one past the last
        class / attribute value), for the images where `where` [B] is True (all if None): the
        unconditional branch of classifier-free guidance. Mask and known image stay."""
        labels, attrs = self.labels, self.attrs
        if labels is not None:
            null = torch.full_like(labels, num_classes)
            labels = null if where is None else torch.where(where, null, labels)
        if attrs is not None:
            null = torch.tensor(attribute_sizes, device=attrs.device).expand_as(attrs)
            attrs = null if where is None else torch.where(where[:, None], null, attrs)
        return replace(self, labels=labels, attrs=attrs)

    def without_labels(self, num_classes: int) -> "Cond":
        """The same condition with every class label replaced by the null token."""
        if self.labels is None:
            return self
        return replace(self, labels=torch.full_like(self.labels, num_classes))


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style sinusoidal embedding of (integer) timesteps, [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device) / max(half - 1, 1)
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class CondEmbedding(nn.Module):
    """Embeds class labels and attributes into one vector that a U-Net adds to its time embedding.

    Declares at construction what a model accepts; a `Cond` field it was not built for is a
    clear error instead of a silently ignored input.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int = 0,
        attribute_sizes: list[int] | tuple[int, ...] = (),
        mask_channels: int = 0,
        self_cond_channels: int = 0,
    ) -> None:
        super().__init__()
        require(num_classes >= 0, f"conditioning.num_classes must be >= 0, got {num_classes}")
        self.num_classes = int(num_classes)
        self.attribute_sizes = tuple(int(a) for a in attribute_sizes)
        self.mask_channels = int(mask_channels)
        self.self_cond_channels = int(self_cond_channels)
        # one extra row: the null label of classifier-free guidance
        self.label_embedding = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.attr_embeddings = nn.ModuleList(nn.Embedding(n + 1, dim) for n in self.attribute_sizes)

    @classmethod
    def for_images(
        cls,
        dim: int,
        in_channels: int,
        num_classes: int = 0,
        attribute_sizes: list[int] | tuple[int, ...] = (),
        mask_conditioning: bool = False,
        self_condition: bool = False,
    ) -> "CondEmbedding":
        """The embedding for a denoiser of `in_channels`-channel images, from the constructor
        arguments every denoiser takes: inpainting adds the known image and the mask as
        in_channels + 1 input channels, self-conditioning the previous x0 estimate."""
        return cls(
            dim,
            num_classes,
            attribute_sizes,
            mask_channels=in_channels + 1 if mask_conditioning else 0,
            self_cond_channels=in_channels if self_condition else 0,
        )

    def forward(self, cond: Cond | None) -> Tensor | None:
        """The summed label and attribute embeddings, or None when there are none."""
        if cond is None:
            return None
        emb = None
        if cond.labels is not None:
            require(
                self.label_embedding is not None,
                "this model was built without class conditioning (conditioning=none); "
                "train with conditioning=class or class_cfg to sample by class",
            )
            emb = self.label_embedding(cond.labels)
        if cond.attrs is not None:
            require(
                cond.attrs.shape[1] == len(self.attribute_sizes),
                f"got {cond.attrs.shape[1]} attributes but the model was built for "
                f"{len(self.attribute_sizes)}",
            )
            for i, table in enumerate(self.attr_embeddings):
                e = table(cond.attrs[:, i])
                emb = e if emb is None else emb + e
        return emb

    def add_to(self, emb: Tensor, cond: Cond | None) -> Tensor:
        """The time embedding plus the label and attribute embeddings."""
        c_emb = self(cond)
        return emb if c_emb is None else emb + c_emb

    @property
    def extra_channels(self) -> int:
        """Input channels the network takes besides x_t."""
        return self.mask_channels + self.self_cond_channels

    def extra_input(self, x: Tensor, cond: Cond | None) -> Tensor:
        """x_t with the extra inputs the model was built for concatenated as channels: the
        inpainting inputs (known image * mask, mask) and the self-conditioning estimate."""
        parts = [x]
        if self.mask_channels:
            require(
                cond is not None and cond.mask is not None and cond.known is not None,
                "this model is mask-conditioned: cond.mask and cond.known are required",
            )
            mask = cond.mask.to(x.dtype)
            parts += [cond.known.to(x.dtype) * mask, mask]
        else:
            require(
                cond is None or cond.mask is None,
                "this model was built without mask conditioning; use conditioning=inpaint",
            )
        if self.self_cond_channels:
            estimate = None if cond is None else cond.self_cond
            parts.append(torch.zeros_like(x) if estimate is None else estimate.to(x.dtype))
        else:
            require(
                cond is None or cond.self_cond is None,
                "this model was built without self-conditioning; train with "
                "diffusion.self_condition=true",
            )
        return torch.cat(parts, dim=1) if len(parts) > 1 else x


def check_image_size(image_size: int, levels: int, key: str = "data.image_size") -> None:
    """A U-Net that halves the resolution `levels` times needs a size divisible by 2**levels."""
    factor = 2**levels
    require(
        image_size >= factor and image_size % factor == 0,
        f"{key}={image_size} cannot be halved {levels} times by this U-Net; "
        f"use a multiple of {factor} (e.g. {factor * max(1, round(image_size / factor))})",
    )
