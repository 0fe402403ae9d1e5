"""Evaluation during training: FID/KID (dataset features), class accuracy and CLIP scores of
samples every N epochs, logged as eval/* (TensorBoard, metrics.json; ModelCheckpoint can
monitor them).

Not on by default: `python -m diffusion_lab.train callbacks=with_eval` adds it to the default
callbacks (conf/callbacks/with_eval.yaml); its settings are callbacks.evaluate.*. The `clip`
metric scores the samples with the CLIP model and prompts of the `clip` group (as
`python -m diffusion_lab.evaluate metrics=[clip]` does): eval/clip_similarity (to the class
prompt) and eval/clip_<prompt>, each prompt's mean probability over the prompt set.
"""

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from diffusion_lab.data.loader import to_model_range
from diffusion_lab.errors import require
from diffusion_lab.metrics.clip_score import (
    ClipScorer,
    build_clip,
    clip_settings,
    dataset_key_of,
    find_clip_from_config,
    plain_config,
    prompt_name,
)
from diffusion_lab.training.callbacks import due

log = logging.getLogger("diffusion_lab")
CALLBACK_METRICS = ("fid", "kid", "accuracy", "clip")


class EvaluateSamples(pl.Callback):
    def __init__(
        self,
        output_dir: str,
        metrics: list[str] | tuple[str, ...] = ("fid", "accuracy"),
        every_n_epochs: int = 5,
        n_samples: int = 500,
        n_real: int | None = 2000,
        sampler: dict | None = None,
        seed: int = 0,
        batch_size: int = 250,
        kid_subsets: int = 50,
        kid_subset_size: int = 1000,
        classifier: dict | None = None,
        clip: dict | None = None,
    ) -> None:
        bad = [m for m in metrics if m not in CALLBACK_METRICS]
        require(
            not bad,
            f"callbacks.evaluate.metrics: {bad} not known; choose from {list(CALLBACK_METRICS)}",
        )
        require(n_samples >= 2, f"callbacks.evaluate.n_samples={n_samples} must be >= 2")
        self.output_dir = Path(output_dir)
        self.metrics = tuple(metrics)
        self.every_n_epochs, self.n_samples, self.n_real = every_n_epochs, n_samples, n_real
        self.sampler = dict(sampler or {})
        self.seed, self.batch_size = seed, batch_size
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.classifier_settings = dict(classifier or {})
        self._classifier = None
        self._distance = None
        self._ready = False
        self.history: list[dict[str, Any]] = []
        self.clip_config = plain_config(clip)
        self._clip_source = None
        self._scorer: ClipScorer | None = None
        self._prompts: dict[str, Any] | None = None
        if "clip" in self.metrics:
            require(
                self.clip_config is not None,
                "callbacks.evaluate.metrics has clip but no CLIP is chosen; add clip=vit_b32_openai "
                "(pretrained weights) or another clip option",
            )
            # where the weights are, checked now: missing weights stop the run before training
            # (the model itself is built at the first evaluation)
            self._clip_source = find_clip_from_config(self.clip_config)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """The data set's prompts, checked before training (on every process)."""
        if "clip" in self.metrics and self._prompts is None:
            dm = trainer.datamodule
            require(
                dm is not None and hasattr(dm, "class_names"),
                "callbacks.evaluate.metrics=[clip] needs a diffusion-lab data module",
            )
            names = list(dm.class_names) or [str(i) for i in range(dm.num_classes)]
            require(names, "callbacks.evaluate.metrics=[clip] needs a data set with classes")
            self._prompts = clip_settings(
                self.clip_config, dataset_key_of(type(dm).__name__), names
            )
            keys = [prompt_name(p) for p in self._prompts["prompts"]]
            require(
                len(set(keys)) == len(keys) and "similarity" not in keys,
                f"clip.prompts {self._prompts['prompts']}: as metric names ({keys}) they must "
                "differ from each other and from `similarity`",
            )

    def _setup(self, trainer: pl.Trainer, module) -> None:
        from diffusion_lab.metrics.classifier import feature_classifier
        from diffusion_lab.metrics.fid import DatasetFeatures, FeatureDistance

        self._ready = True
        if self._clip_source is not None:  # loaded once, for every evaluation of the run
            if self._prompts is None:  # evaluate() called outside trainer.fit
                self.setup(trainer, module, "fit")
            clip = build_clip(self._clip_source, module.device)
            self._scorer = ClipScorer(clip)
            log.info("Evaluation callback: CLIP %s (%s)", clip.name, clip.weights)
        if not {"fid", "kid", "accuracy"} & set(self.metrics):
            return
        dm = trainer.datamodule
        require(
            dm is not None and getattr(dm, "val_data", None) is not None,
            "callbacks.evaluate needs a diffusion-lab data module (train through diffusion_lab.train)",
        )
        self._classifier, info = feature_classifier(
            self.output_dir, dm, self.classifier_settings, module.device, type(dm).__name__
        )
        log.info("Evaluation callback: judge classifier val accuracy %.4f", info["val_accuracy"])
        if {"fid", "kid"} & set(self.metrics):
            self._distance = FeatureDistance(
                DatasetFeatures(self._classifier),
                kid_subsets=self.kid_subsets,
                kid_subset_size=self.kid_subset_size,
                device=module.device,
            )
            real = dm.val_data["image"]
            real = real[: self.n_real] if self.n_real else real
            self._distance.add_real(to_model_range(real))

    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, module) -> dict[str, float]:
        from diffusion_lab.metrics.classifier import accuracy

        if not self._ready:
            self._setup(trainer, module)
        k = module.num_classes
        labels = torch.arange(self.n_samples) % k if k else None
        fake = module.generate(
            self.n_samples,
            labels=labels,
            sampler=self.sampler,
            seed=self.seed,
            batch_size=self.batch_size,
        )
        out: dict[str, float] = {}
        if self._distance is not None:
            scores = self._distance.score(
                fake, tuple(m for m in ("fid", "kid") if m in self.metrics)
            )
            out.update({f"eval/{m}": scores[m] for m in ("fid", "kid") if m in scores})
        if "accuracy" in self.metrics and labels is not None:
            out["eval/accuracy"] = accuracy(self._classifier, fake, labels)
        if self._scorer is not None:
            p = self._prompts
            scores = self._scorer.score(
                fake, p["class_texts"], p["prompts"], p["class_prompt"], labels, self.batch_size
            )
            out["eval/clip_similarity"] = float(scores.similarity.mean())
            for prompt, value in scores.prompt_means().items():
                out[f"eval/clip_{prompt_name(prompt)}"] = value
        return out

    def on_validation_epoch_end(self, trainer: pl.Trainer, module) -> None:
        if not due(trainer, self.every_n_epochs):
            return
        epoch = trainer.current_epoch + 1
        values = self.evaluate(trainer, module) if trainer.is_global_zero else {}
        for name, value in values.items():
            module.log(name, value, rank_zero_only=True)
        if values:
            self.history.append({"epoch": epoch, **values})
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in values.items()})
