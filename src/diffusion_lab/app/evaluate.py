"""`python -m diffusion_lab.evaluate`: score a checkpoint's samples.

task=evaluate   (default) sample from a checkpoint and compute
                metrics=[fid,kid,clip,accuracy,inpainting]; eval.json + eval.md in the run
                directory, TensorBoard hparams. A pattern checkpoint is also scored against
                the independent evaluation patterns (data/eval_patterns.py): independent/*.
task=train_clip train the pattern-set domain CLIP (metrics/domain_clip.py).
task=clip_guide sample with and without CLIP guidance towards a prompt; grid + scores.
"""

import csv
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torchvision.utils import save_image

from diffusion_lab.app.build import build_datamodule, load_module
from diffusion_lab.app.config import command_output_dir, sampling_progress
from diffusion_lab.app.hydra_entry import hydra_entry, run_task
from diffusion_lab.data.datamodules import PatternDataModule
from diffusion_lab.data.eval_patterns import render_eval_patterns
from diffusion_lab.data.loader import to_model_range
from diffusion_lab.errors import require
from diffusion_lab.files import atomic_write
from diffusion_lab.hardware import pick_device, synchronized_clock
from diffusion_lab.metrics import EVAL_SCALARS
from diffusion_lab.metrics.classifier import SmallClassifier, accuracy, feature_classifier
from diffusion_lab.metrics.clip_score import (
    ClipScorer,
    ClipScores,
    clip_guided_generate,
    clip_settings,
    dataset_key_of,
    format_prompt,
    load_clip_from_config,
    top_k_per_class,
)
from diffusion_lab.metrics.fid import (
    DatasetFeatures,
    FeatureDistance,
    InceptionFeatures,
    inception_weights,
)
from diffusion_lab.sampling import sampler_options
from diffusion_lab.training.callbacks import write_json
from diffusion_lab.training.inpaint_callback import score as inpaint_score

log = logging.getLogger("diffusion_lab")

METRICS = ("fid", "kid", "clip", "accuracy", "inpainting")
# what a pattern checkpoint's reference images and inpainting targets are drawn by: the
# training generator's held-out patterns, and/or the independent evaluation generator
PATTERN_SOURCES = ("generator", "independent")
INDEPENDENT = "independent/"  # the prefix of the independent patterns' figures in eval.json
INDEPENDENT_SEED = 0  # one fixed set, so that every checkpoint is scored on the same images
TASKS = ("evaluate", "train_clip", "clip_guide")


def run(cfg: DictConfig) -> dict[str, Any]:
    task = cfg.get("task", "evaluate")
    require(task in TASKS, f"task={task!r} is not one of {list(TASKS)}")
    return {"evaluate": evaluate, "train_clip": train_clip, "clip_guide": clip_guide}[task](cfg)


# ---- helpers ---------------------------------------------------------------------------------
def dataset_key(train_cfg: DictConfig) -> str:
    return dataset_key_of(str(train_cfg.data._target_).rsplit(".", 1)[-1])


def run_dir_for(cfg: DictConfig, ckpt_path: str) -> Path:
    """The training run a checkpoint belongs to (run/checkpoints/x.ckpt -> run), unless
    output_dir says otherwise; else this command's own Hydra directory."""
    if cfg.get("output_dir"):
        return command_output_dir(cfg)
    ckpt = Path(ckpt_path).resolve()
    if ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent
    return command_output_dir(cfg)


def load_data(train_cfg: DictConfig, data_root: str | None):
    if data_root:
        with open_dict(train_cfg):
            train_cfg.data.root = data_root
    dm = build_datamodule(train_cfg)
    dm.setup("fit")
    return dm


def pattern_sources(cfg: DictConfig, train_cfg: DictConfig) -> tuple[str, ...]:
    """The pattern sources to score against (pattern_sources; null: both for a pattern
    checkpoint). Other data sets have one reference, their validation set."""
    chosen = cfg.get("pattern_sources")
    is_patterns = dataset_key(train_cfg) == "patterns"
    if chosen is None:
        return PATTERN_SOURCES if is_patterns else ("generator",)
    chosen = list(chosen) if OmegaConf.is_list(chosen) else [chosen]
    bad = [c for c in chosen if c not in PATTERN_SOURCES]
    require(chosen and not bad, f"pattern_sources={chosen}: choose from {list(PATTERN_SOURCES)}")
    require(
        is_patterns,
        f"pattern_sources={chosen} is for pattern checkpoints (data=patterns); this one was "
        f"trained on {dataset_key(train_cfg)}: leave pattern_sources=null",
    )
    return tuple(s for s in PATTERN_SOURCES if s in chosen)


def pattern_references(dm, n_real: int | None, sources: tuple[str, ...]) -> dict[str, tuple]:
    """Real images (uint8) and labels per source: the validation split's first n_real, and as
    many independent patterns at the same size."""
    val = dm.val_data
    n = len(val["image"]) if n_real is None else min(int(n_real), len(val["image"]))
    refs = {"generator": (val["image"][:n], val["label"][:n])}
    if "independent" in sources:
        refs["independent"] = render_eval_patterns(n, dm.image_size, INDEPENDENT_SEED)
    return refs


def inpainting_targets(dm, n: int, source: str) -> tuple[torch.Tensor, ...]:
    """(images in [-1, 1], labels, masks, mask kinds) to inpaint: the validation split's first n
    with their fixed masks, or n independent patterns under the same n masks."""
    val = dm.val_data
    n = min(n, len(val["image"]))
    mask, kind = val["mask"][:n], val["mask_kind"][:n]
    if source == "generator":
        return to_model_range(val["image"][:n]), val["label"][:n], mask, kind
    # the same masks as the generator's targets: the two figures differ by the patterns only
    images, labels = render_eval_patterns(n, dm.image_size, INDEPENDENT_SEED)
    return to_model_range(images), labels, mask, kind


def generate(
    module,
    n: int,
    labels: torch.Tensor | None,
    sampler: dict,
    seed: int,
    batch_size: int,
    guidance_scale: float | None = None,
) -> tuple[torch.Tensor, float]:
    """n samples (image i's noise from (seed, i), whatever the batch size); returns (images on
    CPU, seconds)."""
    t0 = synchronized_clock(module.device)
    with sampling_progress(f"Sampling {n} images") as step:
        images = module.generate(
            n,
            labels=labels,
            sampler=sampler,
            seed=seed,
            guidance_scale=guidance_scale,
            batch_size=batch_size,
            callback=step,
        )
    return images.cpu(), synchronized_clock(module.device) - t0


def feature_network(
    fcfg: DictConfig, classifier: SmallClassifier | None, weights: str | None = None
) -> tuple[torch.nn.Module, str]:
    """The FID/KID feature network named by fid.features (inception: `weights` resolved by
    check_features beforehand)."""
    if fcfg.features == "dataset":
        return DatasetFeatures(classifier), "dataset classifier (SmallClassifier, 128-d)"
    dim = int(fcfg.inception_dim)
    where = weights or "downloaded"
    return InceptionFeatures(weights, dim), f"InceptionV3 pool features ({dim}-d, {where})"


def check_features(fcfg: DictConfig) -> str | None:
    """Validate fid.features; for inception, find its weights now (before any sampling)."""
    kind = fcfg.features
    require(kind in ("dataset", "inception"), f"fid.features={kind!r} must be dataset or inception")
    if kind == "inception":
        return inception_weights(
            fcfg.get("inception_weights"), bool(fcfg.download), float(fcfg.connect_timeout)
        )
    return None


def write_topk(
    out_dir: Path,
    images: torch.Tensor,
    scores: ClipScores,
    class_names: list[str],
    top_k: int,
    rank_by: str,
) -> dict[str, str]:
    """top_k.png (one row per class, the k best by rank_by, scores in the captions) and
    clip_scores.csv (every sample's scores, its rank in its class, whether it was kept)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = scores.ranking(rank_by)
    best = top_k_per_class(values, scores.labels, len(class_names), top_k)
    rank = torch.full((len(images),), -1, dtype=torch.long)
    for c in range(len(class_names)):
        idx = (scores.labels == c).nonzero().squeeze(1)
        rank[idx[values[idx].argsort(descending=True)]] = torch.arange(len(idx))
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "clip_scores.csv"
    with atomic_write(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["index", "class", "class_name", "similarity"]
            + [f"p[{p}]" for p in scores.prompts]
            + ["rank_in_class", "selected"]
        )
        for i in range(len(images)):
            c = int(scores.labels[i])
            w.writerow(
                [i, c, class_names[c], f"{scores.similarity[i]:.4f}"]
                + [f"{v:.4f}" for v in scores.probs[i].tolist()]
                + [int(rank[i]), int(0 <= rank[i] < top_k)]
            )
    rows = [c for c in range(len(class_names)) if len(best[c])]
    fig, axes = plt.subplots(
        len(rows), top_k, figsize=(1.6 * top_k + 1.2, 1.75 * len(rows)), squeeze=False
    )
    key_prompt = rank_by if rank_by == "similarity" else "p"
    for r, c in enumerate(rows):
        for j in range(top_k):
            ax = axes[r][j]
            ax.axis("off")
            if j >= len(best[c]):
                continue
            i = int(best[c][j])
            img = ((images[i].float() + 1) / 2).clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            rank_val = float(values[i])
            ax.set_title(
                f"{key_prompt} {rank_val:.2f}\nsim {float(scores.similarity[i]):.3f}", fontsize=7
            )
        axes[r][0].text(
            -0.15,
            0.5,
            class_names[c],
            transform=axes[r][0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
    fig.suptitle(f"top {top_k} per class by {ranking_name(rank_by, scores.prompts)}", fontsize=9)
    fig.tight_layout()
    png = out_dir / "top_k.png"
    with atomic_write(png) as f:  # a kill mid-write leaves no half file
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
    return {"top_k_png": str(png), "scores_csv": str(csv_path)}


def shown_prompt(template: str) -> str:
    """A prompt template as a reader should see it: `{class}` stands for each sample's class."""
    return template.replace("{class}", "<class>")


def ranking_name(rank_by: str, prompts: list[str]) -> str:
    """What clip.rank_by ranks by, in words: a prompt index or "p:<prompt>" names its prompt."""
    if rank_by.isdigit() and int(rank_by) < len(prompts):
        return f"p[{shown_prompt(prompts[int(rank_by)])}]"
    return shown_prompt(rank_by[2:]) if rank_by.startswith("p:") else rank_by


def flat_hparams(train_cfg: DictConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """Training settings worth comparing across a sweep, flattened for TensorBoard's hparams."""
    keys = (
        "data._target_",
        "model._target_",
        "model.channels",
        "model.time_dim",
        "schedule.name",
        "schedule.timesteps",
        "diffusion.objective",
        "diffusion.loss_weighting",
        "conditioning.p_uncond",
        "conditioning.guidance_scale",
        "optimizer.lr",
        "data.batch_size",
        "trainer.max_epochs",
        "ema_decay",
        "seed",
    )
    out: dict[str, Any] = {}
    for k in keys:
        v = OmegaConf.select(train_cfg, k)
        if v is None:
            continue
        if isinstance(v, str) and k.endswith("_target_"):
            v = v.rsplit(".", 1)[-1]
        out[k.replace("._target_", "")] = (
            v if isinstance(v, bool | int | float | str) else str(OmegaConf.to_container(v))
        )
    out.update(
        {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in extra.items()}
    )
    return out


def log_tensorboard(
    run_dir: Path, name: str, hparams: dict[str, Any], metrics: dict[str, float]
) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    logdir = run_dir / "tensorboard" / name
    with SummaryWriter(str(logdir)) as w:
        w.add_hparams(hparams, metrics, run_name=".")
    return logdir


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Evaluation of `{results['ckpt_path']}`", ""]
    s = results["sampler"]
    if "n_samples" in results:  # metrics=[inpainting] alone draws no plain samples
        lines.append(
            f"- samples: {results['n_samples']} ({s.get('name')}"
            + (f", {s.get('steps')} steps" if s.get("name") == "ddim" else "")
            + f"), {results['seconds_per_1000_samples']:.1f} s per 1,000 samples on "
            f"{results['device']}"
        )
    if "inpaint_n" in results or INDEPENDENT + "inpaint_n" in results:
        n_inpaint = results.get("inpaint_n", results.get(INDEPENDENT + "inpaint_n"))
        lines.append(
            f"- inpainting: {n_inpaint} held-out images under the checkpoint's validation "
            f"masks ({s.get('name')})"
        )
    if "feature_network" in results:
        lines.append(
            f"- FID/KID features: {results['feature_network']}; both are squared distances in "
            "these features, so compare them only with numbers in the same features"
        )
    if "real_vs_real" in results:
        ref = results["real_vs_real"]
        lines.append(
            f"- reference: two halves of the real set ({ref['n_per_half']} images each) score "
            f"FID {ref['fid']:.4f}, KID {ref['kid']:.4f} (what a perfect generator would get)"
        )
    if "classifier" in results:
        c = results["classifier"]
        lines.append(
            f"- judge classifier: val accuracy {c['val_accuracy']:.4f} on real images "
            f"(trained on {c['train_images']} training images)"
        )
    lines += ["", "| metric | value |", "|---|---:|"]
    scores = ("fid", "kid", "kid_std", "accuracy", "clip_family_accuracy", "clip_similarity")
    for k in scores + ("inpaint_acc", "inpaint_mse", "inpaint_psnr"):
        if k in results:
            lines.append(f"| {k} | {results[k]:.4f} |")
    for k, v in results.get("accuracy_per_class", {}).items():
        lines.append(f"| accuracy[{k}] | {v:.4f} |")
    for k, v in results.get("clip_prompt_probs", {}).items():
        lines.append(f"| p[{shown_prompt(k)}] | {v:.4f} |")
    for k in ("top_k_png", "scores_csv"):
        if k in results:
            lines.append(f"\n{k}: `{results[k]}`")
    if "independent" in results.get("pattern_sources", ()):
        lines += ["", *side_by_side(results)]
    return "\n".join(lines) + "\n"


def side_by_side(results: dict[str, Any]) -> list[str]:
    """The figures that depend on the reference patterns, training generator | independent."""

    def cell(key: str, source: str) -> str:
        first, *rest = key.split(".")  # "real_vs_real.fid": a figure inside a dict
        value = results.get((INDEPENDENT if source == "independent" else "") + first)
        for part in rest:
            value = value.get(part) if isinstance(value, dict) else None
        return "-" if value is None else f"{value:.4f}"

    rows = (
        ("fid", "FID of the samples"),
        ("kid", "KID of the samples"),
        ("real_vs_real.fid", "FID, real vs real (the floor)"),
        ("generator_patterns.fid", "FID of the training generator's held-out patterns"),
        ("judge_accuracy", "judge accuracy on the real patterns"),
        ("inpaint_acc", "inpainting: masked-pixel accuracy"),
    )
    lines = [
        "## Training generator vs independent patterns",
        "",
        "Reference images and inpainting targets from the training generator's held-out "
        "patterns and from the independent evaluation generator (data/eval_patterns.py); the "
        "same samples, the same judge (trained on the training generator's patterns).",
        "",
        "| metric | training generator | independent |",
        "|---|---:|---:|",
    ]
    for key, name in rows:
        pair = cell(key, "generator"), cell(key, "independent")
        if pair != ("-", "-"):
            lines.append(f"| {name} | {pair[0]} | {pair[1]} |")
    return lines


# ---- tasks -----------------------------------------------------------------------------------
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Sample from a checkpoint and compute the chosen metrics."""
    require(cfg.get("ckpt_path"), "ckpt_path=... is required (a .ckpt file from a training run)")
    metrics = list(cfg.metrics)
    bad = [m for m in metrics if m not in METRICS]
    require(not bad, f"metrics: {bad} not known; choose from {list(METRICS)}")
    n = int(cfg.n)
    require(n >= 2, f"n={n} must be >= 2")
    device = pick_device(cfg.device)
    module, train_cfg = load_module(cfg.ckpt_path)
    module.to(device)
    run_dir = run_dir_for(cfg, cfg.ckpt_path)
    sources = pattern_sources(cfg, train_cfg)
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True) if cfg.get("sampler") else {}
    sampler = sampler_options(module.sampler, sampler)
    k = module.num_classes
    if "accuracy" in metrics:
        require(
            k > 0,
            "metrics=[accuracy] needs a class-conditional checkpoint (this one has no labels; "
            "an inpainting checkpoint: metrics=[fid,kid,inpainting])",
        )
    if "inpainting" in metrics:
        require(
            module.mask_conditioned,
            "metrics=[inpainting] needs a mask-conditioned checkpoint (conditioning=inpaint); "
            "inpaint with any other model by sample mode=inpaint sampler=repaint",
        )
        require(int(cfg.inpainting.n) >= 1, f"inpainting.n={cfg.inpainting.n} must be >= 1")
    # the data first: a missing dataset is a clear error before minutes of sampling
    dm = load_data(train_cfg, cfg.get("data_root")) if metrics else None
    weights = check_features(cfg.fid) if {"fid", "kid"} & set(metrics) else None
    # CLIP weights too: a missing file is an error now, not after the sampling
    scorer, prompts = None, None
    if "clip" in metrics:
        names = list(dm.class_names) or [str(i) for i in range(dm.num_classes)]
        prompts = clip_settings(cfg.clip, dataset_key(train_cfg), names)
        scorer = ClipScorer(load_clip_from_config(cfg.clip, device))
    results: dict[str, Any] = {
        "ckpt_path": str(cfg.ckpt_path),
        "sampler": sampler,
        "pattern_sources": list(sources),
    }
    if "independent" in sources:
        results["independent_patterns"] = (
            f"diffusion_lab.data.eval_patterns.render_eval_patterns, seed {INDEPENDENT_SEED}"
        )
    labels = torch.arange(n) % k if k else None
    images = None
    if set(metrics) - {"inpainting"}:  # every other metric scores plain samples
        log.info("Sampling %d images (%s) on %s", n, sampler, device)
        images, seconds = generate(
            module,
            n,
            labels,
            sampler,
            int(cfg.seed),
            int(cfg.batch_size),
            cfg.get("guidance_scale"),
        )
        results.update(
            {
                "n_samples": n,
                "device": str(device),
                "sample_seconds": seconds,
                "seconds_per_1000_samples": seconds / n * 1000,
            }
        )
    classifier = None
    if {"fid", "kid", "accuracy"} & set(metrics):
        if "accuracy" in metrics or cfg.fid.features == "dataset":
            settings = OmegaConf.to_container(cfg.classifier, resolve=True)
            data_id = str(train_cfg.data._target_)
            classifier, info = feature_classifier(run_dir, dm, settings, device, data_id)
            results["classifier"] = info
        refs = pattern_references(dm, cfg.fid.n_real, sources)
        if classifier is not None:  # how well the judge knows each source's real images
            for source in sources:
                real, real_labels = refs[source]
                prefix = INDEPENDENT if source == "independent" else ""
                results[prefix + "judge_accuracy"] = accuracy(
                    classifier, to_model_range(real).to(device), real_labels
                )
    if {"fid", "kid"} & set(metrics):
        feature, desc = feature_network(cfg.fid, classifier, weights)
        results["feature_network"] = desc
        chosen = tuple(m for m in ("fid", "kid") if m in metrics)
        for source in sources:
            dist = FeatureDistance(
                feature,
                kid_subsets=int(cfg.fid.kid_subsets),
                kid_subset_size=int(cfg.fid.kid_subset_size),
                device=device,
            )
            dist.add_real(to_model_range(refs[source][0]))
            figures: dict[str, Any] = dist.score(images, chosen)
            figures["n_real"] = len(refs[source][0])
            figures["real_vs_real"] = dist.real_vs_real()
            if source == "independent":
                # what a perfect copy of the training generator would score here
                generator_real = to_model_range(refs["generator"][0])
                figures["generator_patterns"] = dist.score(generator_real, chosen)
            prefix = INDEPENDENT if source == "independent" else ""
            results.update({prefix + key: value for key, value in figures.items()})
    if "accuracy" in metrics:
        results["accuracy"] = accuracy(classifier, images.to(device), labels)
        names = list(dm.class_names) or [str(i) for i in range(k)]
        results["accuracy_per_class"] = {
            name: accuracy(classifier, images[labels == c].to(device), labels[labels == c])
            for c, name in enumerate(names)
            if bool((labels == c).any())
        }
    if "clip" in metrics:
        results.update(clip_metrics(cfg, scorer, prompts, run_dir, images, labels))
        if dataset_key(train_cfg) == "patterns" and labels is not None:
            from diffusion_lab.metrics.domain_clip import zero_shot_accuracy

            # a second opinion beside the classifier's accuracy: CLIP's zero-shot family
            acc, per_family = zero_shot_accuracy(scorer, images, labels)
            results["clip_family_accuracy"] = acc
            results["clip_family_accuracy_per_family"] = dict(
                zip(dm.class_names, [round(float(v), 4) for v in per_family])
            )
    if "inpainting" in metrics:
        results.update(inpainting_metrics(cfg, module, dm, sources, sampler))
    tag = f"_{cfg.tag}" if cfg.get("tag") else ""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / f"eval{tag}.json", results)
    with atomic_write(run_dir / f"eval{tag}.md", "w") as f:
        f.write(markdown(results))
    scalars = {f"eval/{k}": float(results[k]) for k in EVAL_SCALARS if k in results}
    extra = {
        "eval.sampler": sampler.get("name"),
        "eval.steps": sampler.get("steps") or module.diffusion.num_timesteps,
        "eval.n_samples": n,
        "eval.features": cfg.fid.features,
    }
    tb = log_tensorboard(run_dir, f"eval{tag}", flat_hparams(train_cfg, extra), scalars)
    log.info("Results: %s", {k: v for k, v in scalars.items()})
    if "independent" in sources:
        log.info("\n%s", "\n".join(side_by_side(results)[4:]))
    log.info(
        "Wrote %s, %s and TensorBoard hparams in %s",
        run_dir / f"eval{tag}.json",
        run_dir / f"eval{tag}.md",
        tb,
    )
    return results


def inpainting_metrics(
    cfg: DictConfig, module, dm, sources: tuple[str, ...], sampler: dict[str, Any]
) -> dict[str, Any]:
    """Masked-pixel accuracy (per family and mask kind; MSE/PSNR on other data) of
    inpainting.n held-out images per source under the checkpoint's validation masks."""
    n = int(cfg.inpainting.n)
    two_colour = isinstance(dm, PatternDataModule)
    out: dict[str, Any] = {}
    for source in sources:
        images, labels, mask, kind = inpainting_targets(dm, n, source)
        with sampling_progress(f"Inpainting {len(images)} {source} images") as step:
            filled = module.generate(
                len(images),
                labels=labels if module.num_classes else None,
                known=images,
                mask=mask.float(),
                sampler=sampler,
                seed=int(cfg.seed),
                batch_size=int(cfg.batch_size),
                callback=step,
            ).cpu()
        scores = inpaint_score(
            filled,
            images,
            mask.float(),
            two_colour,
            labels if two_colour else None,
            tuple(dm.class_names) if two_colour else (),
            kind,
            dm.masks.kinds,
        )
        prefix = INDEPENDENT if source == "independent" else ""
        out.update({f"{prefix}inpaint_{key}": value for key, value in scores.items()})
        out[f"{prefix}inpaint_n"] = len(images)
    return out


def clip_metrics(
    cfg: DictConfig,
    scorer: ClipScorer,
    s: dict[str, Any],
    run_dir: Path,
    images: torch.Tensor,
    labels: torch.Tensor | None,
) -> dict[str, Any]:
    """CLIP scores of every sample, the top-k per class (grid + CSV) and their means."""
    ccfg = cfg.clip
    scores = scorer.score(images, s["class_texts"], s["prompts"], s["class_prompt"], labels)
    # clip/ or clip_<tag>/ (tag=clip is plain clip/, not clip_clip/)
    folder = "clip" if cfg.get("tag") in (None, "", "clip") else f"clip_{cfg.tag}"
    files = write_topk(
        run_dir / folder, images, scores, s["class_texts"], int(ccfg.top_k), str(ccfg.rank_by)
    )
    return {
        "clip_model": f"{scorer.clip.name} ({scorer.clip.weights})",
        "clip_similarity": float(scores.similarity.mean()),
        "clip_prompt_probs": scores.prompt_means(),
        **files,
    }


def train_clip(cfg: DictConfig) -> dict[str, Any]:
    """Train the pattern-set domain CLIP into clip.train.output_dir."""
    from diffusion_lab.metrics.domain_clip import train_domain_clip

    ccfg = cfg.clip
    require(
        ccfg.get("train") is not None and ccfg.get("architecture") is not None,
        "task=train_clip needs a clip config with `architecture` and `train` (use clip=domain_patterns)",
    )
    t = OmegaConf.to_container(ccfg.train, resolve=True)
    out = Path(t.pop("output_dir"))
    log.info(
        "Training the domain CLIP (%d steps, batch %d) into %s", t["steps"], t["batch_size"], out
    )
    metrics = train_domain_clip(out, OmegaConf.to_container(ccfg.architecture, resolve=True), **t)
    log.info(
        "Zero-shot family accuracy on %d held-out patterns: %.4f (%.0f s); use it with clip.model=local-dir:%s",
        metrics["held_out_patterns"],
        metrics["zero_shot_family_accuracy"],
        metrics["train_seconds"],
        out,
    )
    return metrics


def clip_guide(cfg: DictConfig) -> dict[str, Any]:
    """Samples with and without CLIP guidance from the same noise; a two-row-per-class grid
    (unguided above guided) and the CLIP similarity to the prompt before and after."""
    require(cfg.get("ckpt_path"), "ckpt_path=... is required (a .ckpt file from a training run)")
    device = pick_device(cfg.device)
    module, train_cfg = load_module(cfg.ckpt_path)
    module.to(device)
    g = cfg.guide
    scorer = ClipScorer(load_clip_from_config(cfg.clip, device))
    k = module.num_classes
    per = int(g.n_per_class)
    labels = torch.arange(k).repeat_interleave(per) if k else None
    n = len(labels) if labels is not None else per
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True) if cfg.get("sampler") else {}
    if g.get("prompt"):
        texts = [str(g.prompt)] * n
    else:
        require(k > 0, "guide.prompt=... is required for an unconditional checkpoint")
        dm_cls = build_datamodule(train_cfg)  # class names only: no data is loaded
        names = list(dm_cls.class_names) or [str(i) for i in range(k)]
        s = clip_settings(cfg.clip, dataset_key(train_cfg), names)
        texts = [format_prompt(s["class_prompt"], s["class_texts"][int(c)]) for c in labels]
    score_fn = scorer.similarity_fn(texts)
    plain = clip_guided_generate(module, score_fn, n, 0.0, labels, sampler, int(cfg.seed))
    t0 = synchronized_clock(module.device)
    guided = clip_guided_generate(
        module, score_fn, n, float(g.scale), labels, sampler, int(cfg.seed), bool(g.normalize)
    )
    seconds = synchronized_clock(module.device) - t0
    with torch.no_grad():
        before, after = score_fn(plain.to(device)).cpu(), score_fn(guided.to(device)).cpu()
    out = command_output_dir(cfg)
    rows = []
    for c in range(max(k, 1)):
        sl = slice(c * per, (c + 1) * per)
        rows += [plain[sl], guided[sl]]
    png = out / "clip_guided.png"
    with atomic_write(png) as f:  # a kill mid-write leaves no half file
        save_image(
            (torch.cat(rows).float() + 1) / 2, f, format="png", nrow=per, padding=1, pad_value=1.0
        )
    result = {
        "ckpt_path": str(cfg.ckpt_path),
        "prompt": str(g.prompt) if g.get("prompt") else "class prompt",
        "scale": float(g.scale),
        "similarity_unguided": float(before.mean()),
        "similarity_guided": float(after.mean()),
        "guided_seconds": seconds,
        "png": str(png),
        "mean_abs_change": float((guided - plain).abs().mean()),
    }
    write_json(out / "clip_guide.json", result)
    log.info(
        "CLIP similarity to the prompt: %.4f unguided -> %.4f guided; grid %s (rows: unguided, guided per class)",
        result["similarity_unguided"],
        result["similarity_guided"],
        png,
    )
    return result


@hydra_entry("evaluate")
def main(cfg: DictConfig) -> float | None:
    return run_task(run, cfg)
