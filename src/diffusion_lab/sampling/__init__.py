"""Drawing samples, framework-free: `generate` (conditioning, guidance, self-conditioning,
inpainting, then a sampler from diffusion.samplers) and `DiffusionPipeline` (a checkpoint
loaded without Lightning or Hydra). Above the math and the models, below training."""

from diffusion_lab.diffusion.samplers import StepCallback
from diffusion_lab.sampling.core import (
    DEFAULT_SAMPLER,
    Guide,
    SelfConditioning,
    check_conditioning,
    generate,
    plan,
    sampler_options,
    sampling_autocast,
)
from diffusion_lab.sampling.pipeline import (
    DiffusionPipeline,
    Trajectory,
    build_denoiser,
    net_weights,
    read_checkpoint,
)

__all__ = [
    "DEFAULT_SAMPLER",
    "DiffusionPipeline",
    "Guide",
    "SelfConditioning",
    "StepCallback",
    "Trajectory",
    "build_denoiser",
    "check_conditioning",
    "generate",
    "net_weights",
    "plan",
    "read_checkpoint",
    "sampler_options",
    "sampling_autocast",
]
