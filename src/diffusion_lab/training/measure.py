"""Cost of a denoiser for comparison tables: forward FLOPs per image."""

import logging

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lab.models import Cond

log = logging.getLogger("diffusion_lab")


def one_image_input(net: nn.Module, device: torch.device | str = "cpu") -> tuple:
    """(x, t, cond) for one image of the size and conditioning the net was built for."""
    c, size, ch = net.cond, net.image_size, net.in_channels
    x = torch.zeros(1, ch, size, size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    if not (c.num_classes or c.attribute_sizes or c.mask_channels):
        return x, t, None
    cond = Cond(
        labels=torch.zeros(1, dtype=torch.long, device=device) if c.num_classes else None,
        attrs=torch.zeros(1, len(c.attribute_sizes), dtype=torch.long, device=device)
        if c.attribute_sizes
        else None,
        mask=torch.ones(1, 1, size, size, device=device) if c.mask_channels else None,
        known=torch.zeros(1, ch, size, size, device=device) if c.mask_channels else None,
    )
    return x, t, cond


@torch.no_grad()
def forward_mflops(net: nn.Module, shape: tuple[int, int, int] | None = None) -> float | None:
    """MFLOPs of one forward pass for one image (torch's FlopCounterMode: convs and matmuls,
    a multiply-add counted as 2 FLOPs; norms and activations are not counted). `shape` (C, H, W)
    is for networks outside this project (benchmark peers), which take `net(x, t)`."""
    device = next(net.parameters()).device
    if hasattr(net, "cond"):  # this project's nets
        inputs = one_image_input(net, device)
    else:
        t = torch.zeros(1, dtype=torch.long, device=device)
        inputs = (torch.zeros(1, *shape, device=device), t)
    was_training = net.training
    net.eval()  # no BatchNorm running-stat updates from this probe
    try:
        with FlopCounterMode(display=False) as counter:
            # forward(), not __call__: with trainer compile=true the call is the compiled one,
            # which would compile again for this batch of 1 and hide the ops from the counter
            net.forward(*inputs)
    except Exception as e:  # a bookkeeping number must not fail a finished training run
        log.warning("could not count FLOPs (%s: %s)", type(e).__name__, e)
        return None
    finally:
        net.train(was_training)
    return counter.get_total_flops() / 1e6
