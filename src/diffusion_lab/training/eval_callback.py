"""Evaluation during training: FID/KID (dataset features) and class accuracy of samples every
N epochs, logged as eval/* (TensorBoard, metrics.json; ModelCheckpoint can monitor them).

Not on by default: `python -m diffusion_lab.train callbacks=with_eval` adds it to the default
callbacks (conf/callbacks/with_eval.yaml); its settings are callbacks.evaluate.*.
"""

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from diffusion_lab.data.loader import to_model_range
from diffusion_lab.errors import require
from diffusion_lab.training.callbacks import due

log = logging.getLogger("diffusion_lab")
CALLBACK_METRICS = ("fid", "kid", "accuracy")


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
        self.history: list[dict[str, Any]] = []

    def _setup(self, trainer: pl.Trainer, module) -> None:
        from diffusion_lab.metrics.classifier import feature_classifier
        from diffusion_lab.metrics.fid import DatasetFeatures, FeatureDistance

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

        if self._classifier is None:
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
