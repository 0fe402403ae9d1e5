"""CLIP scoring with open_clip: per-sample prompt probabilities and image-text similarity,
top-k selection per class, and CLIP-guided sampling.

Weights come from config (`conf/clip/`): an open_clip pretrained tag (downloaded once, then
read from the cache), a local weights file, a `local-dir:` folder (e.g. the domain CLIP that
`python -m diffusion_lab.evaluate task=train_clip` trains) or nothing (random init, for tests).
Nothing is fetched when the weights are already cached; when they are not and the network is
out of reach, loading stops at once with a UserError that says how to supply a file.
"""

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lab.diffusion.gaussian import DenoiseFn
from diffusion_lab.diffusion.score_guidance import score_guided
from diffusion_lab.errors import UserError, require
from diffusion_lab.hardware import reachable

log = logging.getLogger("diffusion_lab")

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
LOCAL_DIR = "local-dir:"


@dataclass
class Clip:
    """An open_clip model with its tokenizer and its own image preprocessing settings."""

    model: nn.Module
    tokenizer: Callable[[Sequence[str]], Tensor]
    preprocess: dict[str, Any]
    name: str
    weights: str = "random init"


@contextlib.contextmanager
def _quiet(level: int = logging.WARNING) -> Iterator[None]:
    """open_clip logs every loading step at INFO on the root logger; keep the console clean."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(max(old, level))
    try:
        yield
    finally:
        root.setLevel(old)


def register_architecture(name: str, architecture: dict[str, Any]) -> None:
    """Make a custom model config (embed_dim, vision_cfg, text_cfg) known to open_clip by name.

    open_clip reads configs from JSON files, so the dict is written to a temporary file."""
    import open_clip

    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        require(key in architecture, f"clip.architecture needs '{key}' (open_clip model config)")
    folder = Path(tempfile.mkdtemp(prefix="dlab_clip_cfg_"))
    (folder / f"{name}.json").write_text(json.dumps(architecture))
    open_clip.add_model_config(folder / f"{name}.json")


def _cached_tag_weights(pcfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """Path of a tag's weights already on disk (open_clip's URL cache or the HF hub cache)."""
    url = pcfg.get("url", "")
    if url:
        path = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if path.is_file():
            return str(path)
    hub = pcfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        stem = filename.rsplit(".", 1)[0]
        for name in (f"{stem}.safetensors", filename):
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    return None


def _pretrained_kwargs(
    model: str, pretrained: str, download: bool, cache_dir: str | None, timeout: float
) -> tuple[dict[str, Any], str]:
    """create_model keyword arguments for `pretrained` (a tag or a file), and a description."""
    import open_clip

    if os.path.isfile(pretrained):
        return {"pretrained": pretrained}, pretrained
    how = (
        "put the weights file on this machine and pass clip.pretrained=/path/to/weights"
        " (e.g. open_clip_pytorch_model.bin)"
    )
    if pretrained.endswith(WEIGHT_SUFFIXES) or os.sep in pretrained:
        raise UserError(f"clip.pretrained={pretrained}: no such weights file; {how}")
    tags = open_clip.list_pretrained_tags_by_model(model)
    require(
        pretrained in tags,
        f"clip.pretrained={pretrained!r} is neither a file nor a pretrained tag of {model} "
        f"(tags: {', '.join(tags) or 'none'})",
    )
    pcfg = open_clip.get_pretrained_cfg(model, pretrained)
    # the tag's own preprocessing and activation, which open_clip applies for tags, not files
    pre = {k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg}
    tag_kwargs = {
        "force_preprocess_cfg": pre,
        "force_quick_gelu": bool(pcfg.get("quick_gelu", False)),
    }
    cached = _cached_tag_weights(pcfg, cache_dir)
    if cached is not None:
        return {"pretrained": cached, **tag_kwargs}, f"{model}/{pretrained} ({cached})"
    source = pcfg.get("hf_hub") and "huggingface.co" or pcfg.get("url", "")
    if not download:
        raise UserError(
            f"clip.pretrained={pretrained}: the {model} weights are not in the local cache and "
            f"clip.download=false; {how}, or allow the one-time download with clip.download=true"
        )
    if not reachable(
        os.environ.get("HF_ENDPOINT", source) if pcfg.get("hf_hub") else source, timeout
    ):
        raise UserError(
            f"clip.pretrained={pretrained}: the {model} weights are not cached and cannot be "
            f"downloaded (no network: {urlparse(source).hostname or source} unreachable); {how}"
        )
    return {"pretrained": pretrained, "cache_dir": cache_dir}, f"{model}/{pretrained}"


@dataclass(frozen=True)
class ClipSource:
    """A CLIP found but not yet built: its open_clip name, create_model arguments and where its
    weights come from (checked: on disk, or downloadable now)."""

    model: str
    kwargs: dict[str, Any]
    weights: str
    pretrained: str | None = None
    architecture: dict[str, Any] | None = None


def find_clip(
    model: str,
    pretrained: str | None = None,
    architecture: dict[str, Any] | None = None,
    download: bool = True,
    cache_dir: str | None = None,
    connect_timeout: float = 3.0,
) -> ClipSource:
    """Check that an open_clip model (+ tag or weights file), custom architecture or local dir
    can be loaded, without loading it: a missing file or unreachable download is a UserError
    now, cheaply, before the work that needs the model."""
    import open_clip

    kwargs: dict[str, Any] = {}
    weights = "random init"
    if model.startswith(LOCAL_DIR):
        folder = Path(model[len(LOCAL_DIR) :])
        require(
            (folder / "open_clip_config.json").is_file(),
            f"clip.model={model}: no trained CLIP in {folder} (open_clip_config.json missing); "
            "train the domain CLIP with `python -m diffusion_lab.evaluate task=train_clip`",
        )
        weights = str(folder)
    else:
        if architecture is not None:
            register_architecture(model, architecture)
        require(
            model in open_clip.list_models(),
            f"clip.model={model!r} is not an open_clip model config (e.g. ViT-B-32, RN50) and no "
            "clip.architecture was given",
        )
        if pretrained:
            kwargs, weights = _pretrained_kwargs(
                model, str(pretrained), download, cache_dir, connect_timeout
            )
    return ClipSource(model, kwargs, weights, pretrained, architecture)


def build_clip(source: ClipSource, device: str | torch.device = "cpu") -> Clip:
    """The model a find_clip found, built (and its weights read) on `device`."""
    import open_clip

    model, pretrained = source.model, source.pretrained
    if source.architecture is not None and model not in open_clip.list_models():
        register_architecture(model, source.architecture)  # a fresh (spawned) process
    try:
        with _quiet():
            clip_model = open_clip.create_model(model, device=device, **source.kwargs)
            tokenizer = open_clip.get_tokenizer(model)
    except UserError:
        raise
    except Exception as e:  # corrupt file, wrong architecture for the weights, failed download
        msg = str(e).strip().splitlines()
        raise UserError(
            f"clip.model={model} clip.pretrained={pretrained}: could not load "
            f"({type(e).__name__}: {msg[0][:200] if msg else ''})"
        ) from None
    clip_model.eval().requires_grad_(False)
    preprocess = dict(clip_model.visual.preprocess_cfg)
    return Clip(clip_model, tokenizer, preprocess, model, source.weights)


def load_clip(model: str, *args: Any, device: str | torch.device = "cpu", **kwargs: Any) -> Clip:
    """An open_clip model by name (+ tag or weights file), custom architecture or local dir:
    find_clip's arguments, built on `device`."""
    return build_clip(find_clip(model, *args, **kwargs), device)


def plain_config(cfg: Any) -> Any:
    """A config node (OmegaConf or already plain) as plain dicts and lists, resolved."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def find_clip_from_config(cfg: Any) -> ClipSource:
    """find_clip from a `clip` config node (conf/clip/*.yaml, OmegaConf or a plain dict)."""
    arch = cfg.get("architecture")
    return find_clip(
        str(cfg["model"]),
        pretrained=cfg.get("pretrained"),
        architecture=plain_config(arch) if arch is not None else None,
        download=bool(cfg.get("download", True)),
        cache_dir=cfg.get("cache_dir"),
        connect_timeout=float(cfg.get("connect_timeout", 3.0)),
    )


def load_clip_from_config(cfg: Any, device: str | torch.device = "cpu") -> Clip:
    """load_clip from a `clip` config node (conf/clip/*.yaml)."""
    return build_clip(find_clip_from_config(cfg), device)


# the key of each data module's prompts in clip.prompts / clip.class_prompt / clip.class_texts
DATASET_KEYS = {
    "PatternDataModule": "patterns",
    "MNISTDataModule": "mnist",
    "FashionMNISTDataModule": "fashion_mnist",
    "CIFAR10DataModule": "cifar10",
    "DigitsDataModule": "digits",
    "ImageFolderDataModule": "folder",
}


def dataset_key_of(datamodule_class: str) -> str:
    """The clip config's key for a data module class name (MNISTDataModule -> mnist)."""
    return DATASET_KEYS.get(datamodule_class, datamodule_class.lower())


def clip_settings(ccfg: Any, key: str, class_names: list[str]) -> dict[str, Any]:
    """Prompt set, class prompt and class texts for a dataset from the clip config."""
    prompts = ccfg["prompts"].get(key)
    require(
        prompts is not None,
        f"clip.prompts has no entry for dataset {key!r} (has: {list(ccfg['prompts'])}); "
        f"add clip.prompts.{key}=[...]",
    )
    texts = (ccfg.get("class_texts") or {}).get(key) or class_names
    require(
        len(texts) == len(class_names),
        f"clip.class_texts.{key} needs {len(class_names)} entries, got {len(texts)}",
    )
    return {
        "prompts": list(prompts),
        "class_prompt": ccfg["class_prompt"].get(key, "a photo of a {class}"),
        "class_texts": list(texts),
    }


def prompt_name(template: str) -> str:
    """A prompt as a metric name: lower case words joined by _, `{class}` left out
    ("a clear image of the digit {class}" -> "a_clear_image_of_the_digit")."""
    words = re.sub(r"[^a-z0-9]+", " ", template.replace("{class}", " ").lower()).split()
    return "_".join(words) or "prompt"


def to_clip_input(images: Tensor, preprocess: dict[str, Any]) -> Tensor:
    """Images in [-1, 1] (1 or 3 channels, any size) -> the CLIP model's normalised input.

    A differentiable tensor version of open_clip's own transform (its preprocess_cfg: size,
    resize mode, interpolation, mean/std), so CLIP guidance can take gradients through it.
    """
    x = (images.float() + 1) / 2
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # grayscale -> RGB
    size = preprocess.get("size", 224)
    th, tw = (size, size) if isinstance(size, int) else tuple(size)
    h, w = x.shape[-2:]
    mode = preprocess.get("resize_mode", "shortest")
    interp = "bicubic" if preprocess.get("interpolation", "bicubic") == "bicubic" else "bilinear"
    if mode == "squash":
        new = (th, tw)
    else:
        ratio = (max if mode == "shortest" else min)(th / h, tw / w)
        new = (max(1, round(h * ratio)), max(1, round(w * ratio)))
    if new != (h, w):
        down = new[0] < h or new[1] < w
        x = F.interpolate(x, size=new, mode=interp, align_corners=False, antialias=down)
        x = x.clamp(0, 1)
    if x.shape[-2:] != (th, tw):
        if mode == "longest":  # pad to the target, as open_clip's ResizeKeepRatio + pad
            ph, pw = th - x.shape[-2], tw - x.shape[-1]
            fill = preprocess.get("fill_color", 0) / 255
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)
        else:  # center crop
            top, left = (x.shape[-2] - th) // 2, (x.shape[-1] - tw) // 2
            x = x[..., top : top + th, left : left + tw]
    mean = torch.tensor(preprocess["mean"], device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocess["std"], device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def format_prompt(template: str, name: str) -> str:
    return template.replace("{class}", name)


@dataclass
class ClipScores:
    """Per-sample CLIP scores. probs: softmax over the prompt set [N, P]; similarity: raw
    cosine similarity to the sample's class prompt [N]; labels [N] (given or CLIP's zero-shot)."""

    prompts: list[str]
    probs: Tensor
    similarity: Tensor
    labels: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)

    def prompt_means(self) -> dict[str, float]:
        """Each prompt's mean probability over the samples (the set sums to 1)."""
        return {p: float(v) for p, v in zip(self.prompts, self.probs.mean(0))}

    def ranking(self, rank_by: str) -> Tensor:
        """The value top-k selection sorts by: "similarity" or "p:<prompt>" / prompt index."""
        if rank_by == "similarity":
            return self.similarity
        key = rank_by[2:] if rank_by.startswith("p:") else rank_by
        if key.isdigit() and int(key) < len(self.prompts):
            return self.probs[:, int(key)]
        require(
            key in self.prompts,
            f"clip.rank_by={rank_by!r}: use 'similarity', a prompt index or one of {self.prompts}",
        )
        return self.probs[:, self.prompts.index(key)]


class ClipScorer:
    """Scores images in [-1, 1] against text with a loaded Clip."""

    def __init__(self, clip: Clip) -> None:
        self.clip = clip
        self.model = clip.model
        self._text_cache: dict[str, Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().clamp(max=100))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Unit-norm text embeddings [T, D] (cached per string)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            tokens = self.clip.tokenizer(missing).to(self.device)
            feats = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            self._text_cache.update(zip(missing, feats))
        return torch.stack([self._text_cache[t] for t in texts])

    def encode_image(self, images: Tensor) -> Tensor:
        """Unit-norm image embeddings [B, D]; differentiable w.r.t. the images."""
        x = to_clip_input(images.to(self.device), self.clip.preprocess)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    def class_embeddings(self, class_texts: Sequence[str] | Sequence[Sequence[str]]) -> Tensor:
        """One unit-norm embedding per class; a class given as several texts is their mean
        (CLIP's prompt ensembling)."""
        out = []
        for texts in class_texts:
            group = [texts] if isinstance(texts, str) else list(texts)
            out.append(F.normalize(self.encode_text(group).mean(0), dim=-1))
        return torch.stack(out)

    @torch.no_grad()
    def zero_shot(
        self,
        images: Tensor,
        class_texts: Sequence[str] | Sequence[Sequence[str]],
        batch_size: int = 256,
        reduce: str = "mean",
    ) -> Tensor:
        """CLIP's zero-shot class of each image from text alone. A class given as several
        texts scores by their mean embedding (reduce="mean", CLIP's prompt ensembling) or by
        its best-matching text (reduce="max", for classes made of distinct sub-kinds)."""
        require(reduce in ("mean", "max"), f"zero-shot reduce={reduce!r} must be mean or max")
        if reduce == "mean":
            emb = self.class_embeddings(class_texts)
        else:
            groups = [[t] if isinstance(t, str) else list(t) for t in class_texts]
            emb = self.encode_text([t for g in groups for t in g])
            owner = torch.cat([torch.full((len(g),), c) for c, g in enumerate(groups)])
        preds = []
        for i in range(0, len(images), batch_size):
            sim = self.encode_image(images[i : i + batch_size]) @ emb.T
            if reduce == "max":
                per_class = sim.new_full((len(sim), len(class_texts)), -2.0)
                per_class = per_class.scatter_reduce(
                    1, owner.to(sim.device).expand_as(sim), sim, reduce="amax"
                )
                sim = per_class
            preds.append(sim.argmax(1).cpu())
        return torch.cat(preds)

    @torch.no_grad()
    def score(
        self,
        images: Tensor,
        class_names: Sequence[str],
        prompts: Sequence[str],
        class_prompt: str,
        labels: Tensor | None = None,
        batch_size: int = 128,
    ) -> ClipScores:
        """Softmax over `prompts` (each may contain {class}) and cosine similarity to
        `class_prompt` for each image. Without labels, CLIP's zero-shot class is used."""
        require(len(prompts) >= 1, "clip.prompts must hold at least one prompt")
        class_texts = [format_prompt(class_prompt, c) for c in class_names]
        if labels is None:
            labels = self.zero_shot(images, class_texts, batch_size)
        labels = labels.long().cpu()
        # [C, P, D]: the prompt set written out for every class
        prompt_emb = torch.stack(
            [self.encode_text([format_prompt(p, c) for p in prompts]) for c in class_names]
        )
        class_emb = self.encode_text(class_texts)
        probs, sims = [], []
        for i in range(0, len(images), batch_size):
            feats = self.encode_image(images[i : i + batch_size])
            lab = labels[i : i + batch_size].to(self.device)
            logits = torch.einsum("bd,bpd->bp", feats, prompt_emb[lab]) * self.logit_scale
            probs.append(logits.softmax(-1).cpu())
            sims.append((feats * class_emb[lab]).sum(-1).cpu())
        return ClipScores(list(prompts), torch.cat(probs), torch.cat(sims), labels)

    def similarity_fn(self, texts: Sequence[str]) -> Callable[[Tensor], Tensor]:
        """score_fn(x0) -> [B]: cosine similarity of each image to its text (one text per
        image, or one text for all); differentiable, for CLIP guidance."""
        emb = self.encode_text(list(texts))

        def score_fn(x0: Tensor) -> Tensor:
            feats = self.encode_image(x0)
            target = emb if len(emb) == len(feats) else emb[:1].expand_as(feats)
            return (feats * target).sum(-1)

        return score_fn


def top_k_per_class(values: Tensor, labels: Tensor, num_classes: int, k: int) -> list[Tensor]:
    """For each class, the indices of its k highest values (highest first)."""
    require(k >= 1, f"clip.top_k={k} must be >= 1")
    out = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().squeeze(1)
        order = values[idx].argsort(descending=True)
        out.append(idx[order[:k]])
    return out


def clip_guided_generate(
    module: Any,
    score_fn: Callable[[Tensor], Tensor],
    n: int,
    scale: float,
    labels: Tensor | None = None,
    sampler: dict | None = None,
    seed: int | None = 0,
    normalize: bool = True,
    guidance_scale: float | None = None,
) -> Tensor:
    """DiffusionModule.generate with the predicted x0 nudged along grad score_fn at each step."""

    def guide(denoise: DenoiseFn) -> DenoiseFn:
        return score_guided(module.diffusion, denoise, score_fn, scale, normalize=normalize)

    return module.generate(
        n, labels=labels, sampler=sampler, guidance_scale=guidance_scale, seed=seed, guide=guide
    )
