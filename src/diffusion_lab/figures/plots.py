"""Analysis figures from the FashionMNIST notebook, as functions that return a matplotlib Figure.

- `forward_process_figure`: a few real images noised at 10 timesteps, two schedules side by side
- `time_embedding_figure`: the sinusoidal time embedding as heatmaps
- `denoising_progression_figure`: x_t of a few samples at 10 reverse timesteps
- `triplets_figure`: noisy x_t / predicted x0 / original at several timesteps

Image figures are sized from their grid (CELL inches per image, HEADER inches for titles),
so a PNG saved with `save_figure(fig, path, dpi)` is exactly figsize * dpi pixels.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

# matplotlib.figure.Figure, not pyplot: no global backend state, nothing ever opens a window
from matplotlib.figure import Figure
from torch import Tensor

from diffusion_lab.diffusion import GaussianDiffusion, make_betas, make_sampler
from diffusion_lab.errors import require
from diffusion_lab.models.conditioning import Cond, sinusoidal_embedding
from diffusion_lab.sampling import sampler_options

if TYPE_CHECKING:
    from diffusion_lab.training.module import DiffusionModule

CELL = 0.8  # inches per image
HEADER = 0.7  # inches above the grid for the titles
LABEL = 0.9  # inches left of the grid for row labels


def evenly_spaced(total: int, count: int) -> list[int]:
    """`count` indices from 0 to total-1, evenly spaced, both ends included."""
    count = max(1, min(count, total))
    return torch.linspace(0, total - 1, count).round().long().unique().tolist()


def mosaic(images: Tensor, pad: int = 2) -> Tensor:
    """[rows, cols, C, H, W] in [-1, 1] -> one [C, H', W'] image in [0, 1], white between tiles.
    One imshow per panel instead of one axes per tile keeps figures cheap to draw."""
    from torchvision.utils import make_grid

    rows, cols = images.shape[:2]
    flat = (images.reshape(rows * cols, *images.shape[2:]).float().cpu().clamp(-1, 1) + 1) / 2
    return make_grid(flat, nrow=cols, padding=pad, pad_value=1.0)


def draw_mosaic(
    ax,
    images: Tensor,
    col_labels: Sequence[str] = (),
    row_labels: Sequence[str] = (),
    pad: int = 2,
) -> None:
    """Tiles [rows, cols, C, H, W] on one axes, labels above the columns and left of the rows."""
    grid = mosaic(images, pad)
    h, w = images.shape[-2:]
    shown = grid[0] if images.shape[2] == 1 else grid.permute(1, 2, 0)
    ax.imshow(shown.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    centres = lambda n, size: [pad + i * (size + pad) + size / 2 - 0.5 for i in range(n)]  # noqa: E731
    ax.xaxis.tick_top()
    ax.set_xticks(centres(len(col_labels), w), list(col_labels), fontsize=7)
    ax.set_yticks(centres(len(row_labels), h), list(row_labels), fontsize=8)
    ax.tick_params(length=0, pad=2)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _grid_figure(rows: int, cols: int, panels: int = 1, left: float = 0.0) -> tuple[Figure, list]:
    """A figure of `panels` side-by-side axes holding rows x cols tiles each (CELL inches a
    tile, one empty CELL between panels, HEADER on top, `left` inches for row labels)."""
    width = left + (panels * cols + panels - 1) * CELL
    fig = Figure(figsize=(width, HEADER + rows * CELL))
    h = fig.get_size_inches()[1]
    axes = []
    for p in range(panels):
        x0 = (left + p * (cols + 1) * CELL) / width
        axes.append(fig.add_axes((x0, 0.01, cols * CELL / width, rows * CELL / h - 0.01)))
    return fig, axes


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """PNG of exactly figsize * dpi pixels (no tight bbox, so sizes are predictable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def render(fig: Figure, dpi: int = 100) -> np.ndarray:
    """The figure as an HxWx3 uint8 array (for TensorBoard and for saving without a re-render)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def schedules_for(timesteps: int, schedule: Mapping | None = None) -> dict[str, GaussianDiffusion]:
    """Linear (the run's start/end when its schedule is linear) and cosine, both with T steps."""
    linear = {"start": 1e-4, "end": 0.02}
    if schedule is not None and schedule.get("name") == "linear":
        linear = {"start": schedule["start"], "end": schedule["end"]}
    return {
        "linear": GaussianDiffusion(make_betas("linear", timesteps, **linear)),
        "cosine": GaussianDiffusion(make_betas("cosine", timesteps)),
    }


def sinusoidal_dim(net: torch.nn.Module, default: int = 64) -> int:
    """Width of the sinusoidal embedding a U-Net feeds its time MLP (the first Linear's input);
    `default` for a network that does not say (a user's own)."""
    first = getattr(getattr(net, "time_mlp", None), "__getitem__", None)
    layer = first(0) if first is not None else None
    return int(getattr(layer, "in_features", getattr(net, "time_dim", default)))


# ---- forward process --------------------------------------------------------------------------
def forward_process_figure(
    images: Tensor,
    schedules: dict[str, GaussianDiffusion],
    steps: int = 10,
    seed: int = 0,
) -> Figure:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps of each image at `steps` evenly spaced t, one
    panel per schedule side by side, the same noise in every panel so only the schedule differs.

    Size: ((k * steps + k - 1) * CELL) x (HEADER + len(images) * CELL) for k schedules (one
    empty CELL between panels).
    """
    require(len(images) >= 1, "forward_process_figure needs at least one image")
    require(len(schedules) >= 1, "forward_process_figure needs at least one schedule")
    n, k = len(images), len(schedules)
    fig, axes = _grid_figure(n, steps, panels=k)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g)
    for ax, (name, diffusion) in zip(axes, schedules.items()):
        T = diffusion.num_timesteps
        ts = evenly_spaced(T, steps)
        t = torch.tensor(ts).repeat(n)  # row-major: image i at every timestep
        x0 = images.float().repeat_interleave(len(ts), 0)
        x_t = diffusion.q_sample(x0, t, noise.repeat_interleave(len(ts), 0))
        labels = [f"t={s}\nᾱ={float(diffusion.alpha_bar[s]):.2f}" for s in ts]
        draw_mosaic(ax, x_t.reshape(n, len(ts), *images.shape[1:]), labels)
        ax.set_title(f"{name} (T={T})", fontsize=10, pad=24)
    return fig


# ---- time embedding ---------------------------------------------------------------------------
def time_embedding_figure(timesteps: int, dim: int) -> Figure:
    """Left: the sinusoidal embedding of every t (rows) over its `dim` features; right: the cosine
    similarity between the embeddings of every pair of timesteps. Size 11 x 4.5 inches."""
    require(timesteps >= 2, f"timesteps={timesteps} must be >= 2")
    require(dim >= 2, f"dim={dim} must be >= 2")
    t = torch.arange(timesteps)
    emb = sinusoidal_embedding(t, dim)
    unit = emb / emb.norm(dim=1, keepdim=True).clamp(min=1e-8)
    sim = unit @ unit.T
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    im = left.imshow(
        emb.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest"
    )
    left.set_xlabel("embedding feature (sin | cos)")
    left.set_ylabel("timestep t")
    left.set_title(f"sinusoidal embedding, dim={dim}")
    fig.colorbar(im, ax=left, shrink=0.8)
    im = right.imshow(sim.numpy(), cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    right.set_xlabel("timestep t")
    right.set_ylabel("timestep t")
    right.set_title("cosine similarity between timesteps")
    fig.colorbar(im, ax=right, shrink=0.8)
    fig.suptitle(f"Time embedding for T={timesteps}")
    return fig


# ---- reverse process --------------------------------------------------------------------------
def _sampler_steps(module: "DiffusionModule", sampler: dict | None) -> list[int]:
    """The timestep of each sampler step (the callback is called once per step)."""
    chosen = make_sampler(module.diffusion, sampler_options(module.sampler, sampler))
    return [int(round(float(t))) for t in chosen.timesteps]


def progression_frames(
    module: "DiffusionModule",
    n: int = 4,
    columns: int = 10,
    labels: Tensor | None = None,
    sampler: dict | None = None,
    seed: int = 0,
) -> list[tuple[int, Tensor]]:
    """(t, x_t) at `columns` evenly spaced steps of the reverse process, first and last step
    included (the last x is the final sample, as `module.generate` returns it)."""
    keep = set(evenly_spaced(len(_sampler_steps(module, sampler)), columns))
    frames: list[tuple[int, Tensor]] = []

    def grab(i: int, t: int, x: Tensor, x0: Tensor) -> None:
        if i in keep:
            frames.append((t, x.float().cpu().clamp(-1, 1)))

    module.generate(n, labels=labels, sampler=sampler, seed=seed, callback=grab)
    return frames


def denoising_progression_figure(
    module: "DiffusionModule",
    n: int = 4,
    columns: int = 10,
    labels: Tensor | None = None,
    sampler: dict | None = None,
    seed: int = 0,
) -> Figure:
    """x_t of `n` samples at `columns` evenly spaced steps of the reverse process (the last
    column is the final sample), with the model's sampler and EMA weights.

    Size: (LABEL + columns' * CELL) x (HEADER + n * CELL), columns' = min(columns, sampler steps).
    """
    frames = progression_frames(module, n, columns, labels, sampler, seed)
    fig, (ax,) = _grid_figure(n, len(frames), left=LABEL)
    tiles = torch.stack([x for _, x in frames], 1)  # [n, frames, C, H, W]
    draw_mosaic(ax, tiles, [f"t={t}" for t, _ in frames], [f"sample {i}" for i in range(n)])
    ax.set_title("reverse process: x_t from noise to sample", fontsize=9, pad=14)
    return fig


@torch.no_grad()
def predict_x0(
    module: "DiffusionModule", images: Tensor, labels: Tensor | None, t: int, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """(x_t, predicted x0) for clean `images` noised to timestep t with a fixed-seed noise."""
    device = module.device
    x0 = images.float().to(device)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g).to(device)
    tt = torch.full((len(x0),), t, dtype=torch.long, device=device)
    x_t = module.diffusion.q_sample(x0, tt, noise)
    net = module.sampling_net
    batch = {"image": x0, "label": labels.to(device) if labels is not None else None}
    cond = module.cond_from_batch(batch, drop=False) if module.num_classes else None
    if net.cond.mask_channels:  # an inpainting net: predict with nothing known
        cond = Cond(
            labels=cond.labels if cond else None,
            mask=torch.zeros_like(x0[:, :1]),
            known=torch.zeros_like(x0),
        )
    was_training = net.training
    net.eval()
    try:
        out = net(x_t, tt, cond)
    finally:
        net.train(was_training)
    pred, _ = module.diffusion.split_prediction(out, x_t, tt)
    return x_t.cpu(), pred.cpu()


def triplets_figure(
    module: "DiffusionModule",
    images: Tensor,
    labels: Tensor | None = None,
    timesteps: Sequence[int] | None = None,
    title: str = "",
    seed: int = 0,
) -> Figure:
    """Rows: timesteps; for each image three columns: noisy x_t, the model's predicted x0 and the
    original. Default timesteps: 4 evenly spaced from T/10 to 9T/10.

    Size: (LABEL + 3 * len(images) * CELL) x (HEADER + len(timesteps) * CELL).
    """
    T = module.diffusion.num_timesteps
    if timesteps is None:
        timesteps = [round(T * f) for f in (0.1, 0.35, 0.6, 0.9)]
    for t in timesteps:
        require(0 <= t < T, f"timestep {t} is outside 0..{T - 1}")
    n = len(images)
    fig, (ax,) = _grid_figure(len(timesteps), 3 * n, left=LABEL)
    rows = []
    for t in timesteps:
        x_t, pred = predict_x0(module, images, labels, t, seed=seed)
        rows.append(torch.stack([x_t, pred, images.float().cpu()], 1).flatten(0, 1))
    draw_mosaic(
        ax,
        torch.stack(rows),
        ["noisy", "pred x0", "original"] * n,
        [f"t={t}" for t in timesteps],
    )
    ax.set_title(title or "noisy / predicted x0 / original", fontsize=9, pad=14)
    return fig


def pick_images(split: dict[str, Tensor], n: int) -> tuple[Tensor, Tensor | None]:
    """n images in [-1, 1] from a data split ({"image": uint8, "label": ...}), one per class
    first so the figure shows variety; returns (images, labels)."""
    from diffusion_lab.data.loader import to_model_range

    labels = split.get("label")
    idx: list[int] = []
    if labels is not None:
        seen: set[int] = set()
        for i, y in enumerate(labels.tolist()):
            if y not in seen:
                seen.add(y)
                idx.append(i)
            if len(idx) == n:
                break
    for i in range(len(split["image"])):  # top up when there are fewer classes than n
        if len(idx) >= n:
            break
        if i not in idx:
            idx.append(i)
    index = torch.tensor(idx)
    return to_model_range(split["image"][index]), labels[index] if labels is not None else None
