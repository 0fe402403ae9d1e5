"""diffusion-lab: small denoising diffusion experiments with Hydra + PyTorch Lightning."""

__version__ = "0.2.0"
