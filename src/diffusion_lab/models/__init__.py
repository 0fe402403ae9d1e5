"""Denoising networks (plain nn.Modules, no Lightning, no Hydra). All share `forward(x_t, t, cond)`."""

from diffusion_lab.models.attn_unet import AttnUNet
from diffusion_lab.models.conditioning import Cond, CondEmbedding
from diffusion_lab.models.gelu_unet import GeluUNet
from diffusion_lab.models.light_unet import LightUNet
from diffusion_lab.models.simple_unet import SimpleUNet

__all__ = ["AttnUNet", "Cond", "CondEmbedding", "SimpleUNet", "GeluUNet", "LightUNet"]
