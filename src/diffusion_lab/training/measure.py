"""Cost of a denoiser for comparison tables: forward FLOPs per image."""

import logging

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lab.models import Cond

log = logging.getLogger("diffusion_lab")


def dummy_cond(net: nn.Module, batch: int, device: torch.device) -> Cond | None:
    """A conditioning input of the right shape for whatever the net was built to take."""
    c = net.cond
    if not (c.num_classes or c.attribute_sizes or c.mask_channels):
        return None
    size, ch = net.image_size, net.in_channels
    return Cond(
        labels=torch.zeros(batch, dtype=torch.long, device=device) if c.num_classes else None,
        attrs=torch.zeros(batch, len(c.attribute_sizes), dtype=torch.long, device=device)
        if c.attribute_sizes
        else None,
        mask=torch.ones(batch, 1, size, size, device=device) if c.mask_channels else None,
        known=torch.zeros(batch, ch, size, size, device=device) if c.mask_channels else None,
    )


@torch.no_grad()
def forward_mflops(net: nn.Module, shape: tuple[int, int, int] | None = None) -> float | None:
    """MFLOPs of one forward pass for one image (torch's FlopCounterMode: convs and matmuls,
    a multiply-add counted as 2 FLOPs; norms and activations are not counted). `shape` (C, H, W)
    is for networks outside this project (benchmark peers), which take `net(x, t)`."""
    device = next(net.parameters()).device
    shape = shape or (net.in_channels, net.image_size, net.image_size)
    x = torch.zeros(1, *shape, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    was_training = net.training
    net.eval()  # no BatchNorm running-stat updates from this probe
    try:
        with FlopCounterMode(display=False) as counter:
            net(x, t, dummy_cond(net, 1, device)) if hasattr(net, "cond") else net(x, t)
    except Exception as e:  # a bookkeeping number must not fail a finished training run
        log.warning("could not count FLOPs (%s: %s)", type(e).__name__, e)
        return None
    finally:
        net.train(was_training)
    return counter.get_total_flops() / 1e6
