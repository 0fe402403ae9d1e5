"""A small domain CLIP for the red/blue pattern set, trained from scratch on a CPU in minutes.

Captions are written from each pattern's parameters ("red and blue vertical stripes", "a blue
checkerboard on red", "a blurry image of coarse red dots on blue", ...). The model is a
standard open_clip CLIP built from a small custom config (a tiny ViT and a tiny text
transformer, random init) and trained with open_clip's own contrastive loss (ClipLoss). It is
saved as an open_clip `local-dir:` folder (open_clip_config.json + weights), so it loads with
`open_clip.create_model("local-dir:<folder>")` like any other CLIP, and CLIP scoring and
guidance then work on the pattern set with no network at all.

Some training images are blurred or noised and captioned so ("a blurry image of ...", "a
noisy image of ..."), which gives the quality prompts of the CLIP reports a meaning here.
"""

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion_lab.data.loader import to_model_range
from diffusion_lab.data.patterns import (
    CONCENTRIC_SHAPES,
    FAMILIES,
    ORIENTATIONS,
    generate_patterns_with_info,
)
from diffusion_lab.errors import require
from diffusion_lab.metrics.clip_score import (
    Clip,
    ClipScorer,
    _quiet,
    register_architecture,
    to_clip_input,
)

log = logging.getLogger("diffusion_lab")

# Images go in as [-1, 1]; mean/std 0.5 map them to [-1, 1] again, at the pattern size.
PREPROCESS = {
    "size": 32,
    "mode": "RGB",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bilinear",
    "resize_mode": "squash",
    "fill_color": 0,
}
SCALES = ("fine", "coarse")
# the noun(s) for each family; {orientation} and {shape} are filled from the pattern
NOUNS = (
    ("checkerboard", "checkered pattern"),
    ("{orientation} stripes", "{orientation} striped pattern"),
    ("grid", "grid of lines"),
    ("dots", "polka dots"),
    ("zigzag", "zigzag bands"),
    ("waves", "wavy bands"),
    ("concentric {shape}", "{shape} rings"),
    ("geometric shapes", "random shapes"),
)
# the name a class prompt uses for each family ("a clear image of red and blue {class}")
CLASS_TEXTS = (
    "checkerboard",
    "stripes",
    "grid",
    "dots",
    "zigzag",
    "waves",
    "concentric circles",
    "geometric shapes",
)
TEMPLATES = (
    "{fg} {noun} on {bg}",
    "a {scale} {fg} and {bg} {noun}",
    "{fg} and {bg} {noun}",
    "a {scale} pattern of {fg} {noun} on a {bg} background",
)
QUALITY = {
    "clear": "a clear image of ",
    "blurry": "a blurry image of ",
    "noisy": "a noisy image of ",
}


def _nouns(family: int, orientation: int, shape: int) -> list[str]:
    return [
        n.format(
            orientation=ORIENTATIONS[orientation] if orientation >= 0 else "",
            shape=CONCENTRIC_SHAPES[shape] if shape >= 0 else "circles",
        ).strip()
        for n in NOUNS[family]
    ]


def caption(
    family: int,
    scale: int,
    red_foreground: bool,
    orientation: int = -1,
    shape: int = -1,
    rng: random.Random | None = None,
) -> str:
    """One caption for a pattern; `rng` picks the template and noun (first ones without)."""
    fg, bg = ("red", "blue") if red_foreground else ("blue", "red")
    nouns = _nouns(family, orientation, shape)
    noun = rng.choice(nouns) if rng else nouns[0]
    template = rng.choice(TEMPLATES) if rng else TEMPLATES[0]
    return template.format(fg=fg, bg=bg, noun=noun, scale=SCALES[scale])


def family_captions(family: int) -> list[str]:
    """Every caption the family can get (all templates, colours, scales, orientations, shapes):
    averaged, their embeddings are the family's zero-shot class embedding."""
    orientations = range(len(ORIENTATIONS)) if family == 1 else [-1]
    shapes = range(len(CONCENTRIC_SHAPES)) if family == 6 else [-1]
    out = []
    for o in orientations:
        for s in shapes:
            for scale in (0, 1):
                for red in (True, False):
                    for noun in _nouns(family, o, s):
                        fg, bg = ("red", "blue") if red else ("blue", "red")
                        out += [
                            t.format(fg=fg, bg=bg, noun=noun, scale=SCALES[scale])
                            for t in TEMPLATES
                        ]
    return sorted(set(out))


def corrupt(x: Tensor, kind: str, g: torch.Generator) -> Tensor:
    """'blurry': a 3x3-5x5 box blur; 'noisy': Gaussian noise of std 0.3-0.6 (images in [-1, 1])."""
    if kind == "blurry":
        k = int(torch.randint(1, 3, (1,), generator=g)) * 2 + 1
        return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)
    if kind == "noisy":
        std = 0.3 + 0.3 * torch.rand(len(x), 1, 1, 1, generator=g)
        return (x + std * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x


def make_batch(
    images: Tensor,
    labels: Tensor,
    scale: Tensor,
    params: dict[str, Tensor],
    idx: Tensor,
    g: torch.Generator,
    rng: random.Random,
    corrupt_prob: float,
) -> tuple[Tensor, list[str]]:
    """Images in [-1, 1] and their captions; a fraction is blurred or noised (and says so)."""
    x = to_model_range(images[idx])
    u = torch.rand(len(idx), generator=g)
    kinds = [
        "blurry" if v < corrupt_prob / 2 else "noisy" if v < corrupt_prob else "clear" for v in u
    ]
    for kind in ("blurry", "noisy"):
        sel = torch.tensor([k == kind for k in kinds])
        if sel.any():
            x[sel] = corrupt(x[sel], kind, g)
    texts = []
    for j, i in enumerate(idx.tolist()):
        text = caption(
            int(labels[i]),
            int(scale[i]),
            bool(params["red_foreground"][i]),
            int(params["orientation"][i]),
            int(params["shape"][i]),
            rng,
        )
        # clean images are captioned with and without "a clear image of"
        if kinds[j] != "clear" or rng.random() < 0.5:
            text = QUALITY[kinds[j]] + text
        texts.append(text)
    return x, texts


@torch.no_grad()
def zero_shot_accuracy(scorer: ClipScorer, images: Tensor, labels: Tensor) -> tuple[float, Tensor]:
    """Family accuracy when each family is described only by text: all the captions it can
    get, the family of an image being the one with the best-matching caption (a family is
    several sub-kinds: four stripe orientations, three concentric shapes, two colour orders).
    images uint8 or [-1, 1]. Returns (accuracy, per-family accuracy)."""
    x = to_model_range(images) if images.dtype == torch.uint8 else images
    captions = [family_captions(f) for f in range(len(FAMILIES))]
    preds = scorer.zero_shot(x, captions, reduce="max")
    correct = (preds == labels.cpu()).float()
    per_family = torch.stack(
        [
            correct[labels == f].mean() if (labels == f).any() else torch.tensor(float("nan"))
            for f in range(len(FAMILIES))
        ]
    )
    return float(correct.mean()), per_family


def save_local_dir(model: torch.nn.Module, architecture: dict[str, Any], folder: Path) -> None:
    """open_clip's local-dir layout: open_clip_config.json + open_clip_pytorch_model.bin."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": architecture, "preprocess_cfg": dict(model.visual.preprocess_cfg)}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")


def train_domain_clip(
    output_dir: str | Path,
    architecture: dict[str, Any],
    steps: int = 1200,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 0.1,
    warmup_steps: int = 100,
    num_train: int = 20_000,
    num_eval: int = 2_000,
    corrupt_prob: float = 0.3,
    seed: int = 0,
    log_every: int = 100,
) -> dict[str, Any]:
    """Train the pattern-set CLIP and save it to output_dir (an open_clip local-dir folder).

    Returns metrics: zero-shot family accuracy on held-out patterns (overall and per family),
    final loss, steps, wall time.
    """
    import open_clip
    from open_clip.loss import ClipLoss

    require(steps >= 1, f"clip.train.steps={steps} must be >= 1")
    require(batch_size >= 2, f"clip.train.batch_size={batch_size} must be >= 2 (contrastive)")
    require(0 <= corrupt_prob < 1, f"clip.train.corrupt_prob={corrupt_prob} must be in [0, 1)")
    size = int(architecture["vision_cfg"]["image_size"])
    name = "dlab-domain-clip"
    register_architecture(name, architecture)
    torch.manual_seed(seed)
    with _quiet(logging.ERROR):  # "no pretrained weights loaded" is the point here
        model = open_clip.create_model(name, force_preprocess_cfg={**PREPROCESS, "size": size})
        tokenizer = open_clip.get_tokenizer(name)
    images, labels, scale, params = generate_patterns_with_info(num_train, size, seed)
    held_out = generate_patterns_with_info(num_eval, size, seed + 7_919_993)  # other seed stream
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    loss_fn = ClipLoss()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        fused=True,  # one kernel per step: the 49408-token embedding dominates a tiny CLIP
    )

    def lr_at(step: int) -> float:  # linear warm-up, then cosine decay (as open_clip's trainer)
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    token_cache: dict[str, Tensor] = {}  # a few thousand distinct captions: tokenize each once

    def tokens(texts: list[str]) -> Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in token_cache]
        if new:
            token_cache.update(zip(new, tokenizer(new)))
        return torch.stack([token_cache[t] for t in texts])

    model.train()
    t0 = time.perf_counter()
    losses: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, num_train, (batch_size,), generator=g)
        x, texts = make_batch(images, labels, scale, params, idx, g, rng, corrupt_prob)
        img = model.encode_image(to_clip_input(x, model.visual.preprocess_cfg), normalize=True)
        txt = model.encode_text(tokens(texts), normalize=True)
        loss = loss_fn(img, txt, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # CLIP's cap on the temperature
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            log.info(
                "domain CLIP step %d/%d  loss %.3f  (%.0f s)",
                step + 1,
                steps,
                sum(losses[-log_every:]) / len(losses[-log_every:]),
                time.perf_counter() - t0,
            )
    train_seconds = time.perf_counter() - t0
    model.eval()
    clip = Clip(model, tokenizer, dict(model.visual.preprocess_cfg), name, "trained here")
    acc, per_family = zero_shot_accuracy(ClipScorer(clip), held_out[0], held_out[1])
    out = Path(output_dir)
    save_local_dir(model, architecture, out)
    metrics = {
        "zero_shot_family_accuracy": acc,
        "zero_shot_per_family": {f: float(a) for f, a in zip(FAMILIES, per_family)},
        "held_out_patterns": num_eval,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "steps": steps,
        "batch_size": batch_size,
        "train_seconds": train_seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "model": f"local-dir:{out}",
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
