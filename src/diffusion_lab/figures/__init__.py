"""Figures (matplotlib, torchvision grids): the analysis figures and the comparison report."""

from diffusion_lab.figures.plots import (
    denoising_progression_figure,
    forward_process_figure,
    pick_images,
    render,
    save_figure,
    time_embedding_figure,
    triplets_figure,
)

__all__ = [
    "denoising_progression_figure",
    "forward_process_figure",
    "pick_images",
    "render",
    "save_figure",
    "time_embedding_figure",
    "triplets_figure",
]
