"""Figures (matplotlib, torchvision grids): analysis figures and the comparison report's plots.

Command line: `python -m diffusion_lab.viz {forward,embedding,progression,triplets} ...`.
"""

from diffusion_lab.viz.figures import (
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
