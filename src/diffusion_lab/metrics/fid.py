"""FID and KID (torchmetrics) between generated samples and the validation set.

Two feature networks, which give numbers on different scales (never compare across them):
- "dataset": the penultimate layer (128-d) of a SmallClassifier trained on the run's own
  training data; works offline on any dataset, trained once and cached in the run directory.
- "inception": the standard InceptionV3 pool features (2048-d, torch-fidelity's port of the
  TF weights), when its weights file is at hand: `fid.inception_weights=PATH`, torch-fidelity's
  download cache, or a one-time download (`fid.download=true` with network).
"""

import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from diffusion_lab.errors import UserError, require
from diffusion_lab.hardware import fork_rng, reachable
from diffusion_lab.metrics.classifier import SmallClassifier

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILE = os.path.basename(urlparse(INCEPTION_URL).path)
INCEPTION_DIMS = (64, 192, 768, 2048)


class DatasetFeatures(nn.Module):
    """A trained SmallClassifier's features for images in [-1, 1]."""

    def __init__(self, classifier: SmallClassifier) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.feature_dim  # torchmetrics reads this (no dummy pass)

    def train(self, mode: bool = True) -> "DatasetFeatures":
        return super().train(False)  # BatchNorm must stay in eval mode

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x.float())


class InceptionFeatures(nn.Module):
    """torchmetrics' InceptionV3 (torch-fidelity weights) for images in [-1, 1], 1 or 3 channels."""

    def __init__(self, weights_path: str | None, feature_dim: int = 2048) -> None:
        super().__init__()
        require(
            feature_dim in INCEPTION_DIMS,
            f"fid.inception_dim={feature_dim} must be one of {list(INCEPTION_DIMS)}",
        )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=[str(feature_dim)],
                feature_extractor_weights_path=weights_path,
            )
        except ModuleNotFoundError:
            raise UserError(
                "fid.features=inception needs torch-fidelity (pip install torch-fidelity); "
                "or use fid.features=dataset"
            ) from None
        except Exception as e:  # a corrupt or foreign weights file
            raise UserError(
                f"fid.inception_weights={weights_path}: not torch-fidelity InceptionV3 weights "
                f"({type(e).__name__})"
            ) from None
        self.num_features = feature_dim

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        u8 = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(u8)


def inception_weights(
    path: str | None = None, download: bool = False, connect_timeout: float = 3.0
) -> str | None:
    """The InceptionV3 weights file to use; None means 'let torch-fidelity download it now'.

    Looks at `path`, then torch-fidelity's download cache (torch.hub's checkpoints folder).
    Raises a UserError saying how to supply the file when it is nowhere and cannot be fetched.
    """
    if path:
        require(
            Path(path).is_file(),
            f"fid.inception_weights={path}: no such file (expected torch-fidelity's {INCEPTION_FILE})",
        )
        return str(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return str(cached)
    how = (
        f"download {INCEPTION_URL} on a machine with network and pass "
        f"fid.inception_weights=/path/to/{INCEPTION_FILE} (or copy it to {cached.parent}/), "
        "or use the offline dataset features (fid.features=dataset)"
    )
    if not download:
        raise UserError(
            f"fid.features=inception: no InceptionV3 weights here and fid.download=false; {how}"
        )
    if not reachable(INCEPTION_URL, connect_timeout):
        raise UserError(
            f"fid.features=inception: no InceptionV3 weights here and {urlparse(INCEPTION_URL).hostname} "
            f"is unreachable (no network); {how}"
        )
    return None


class FeatureDistance:
    """FID and KID against a fixed real set: real features are computed once, then any number
    of generated sets is scored (torchmetrics with reset_real_features=False). Scores are of
    this process's images only (no sync across DDP processes: rank 0 evaluates alone)."""

    def __init__(
        self,
        feature: nn.Module,
        kid_subsets: int = 50,
        kid_subset_size: int = 1000,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.feature = feature.to(self.device)
        self.fid = FrechetInceptionDistance(
            feature=self.feature, reset_real_features=False, sync_on_compute=False
        )
        self.fid.to(self.device)
        self.n_real = 0
        self._real_feats: list[Tensor] = []

    def _batches(self, images: Tensor):
        for i in range(0, len(images), self.batch_size):
            yield images[i : i + self.batch_size].float().to(self.device)

    @torch.no_grad()
    def add_real(self, images: Tensor) -> None:
        """Real images in [-1, 1] (e.g. the validation set)."""
        for x in self._batches(images):
            self.fid.update(x, real=True)
            self._real_feats.append(self.feature(x).cpu())
        self.n_real += len(images)

    @torch.no_grad()
    def score(self, fake: Tensor, metrics: tuple[str, ...] = ("fid", "kid")) -> dict[str, float]:
        """FID (and KID mean/std) of generated images in [-1, 1] against the real set."""
        require(self.n_real >= 2, "FID/KID need at least 2 real images")
        require(len(fake) >= 2, f"FID/KID need at least 2 generated images, got {len(fake)}")
        out: dict[str, float] = {}
        self.fid.reset()  # keeps the real statistics
        fake_feats = []
        for x in self._batches(fake):
            self.fid.update(x, real=False)
            if "kid" in metrics:
                fake_feats.append(self.feature(x).cpu())
        if "fid" in metrics:
            out["fid"] = float(self.fid.compute())
        if "kid" in metrics:
            subset = min(self.kid_subset_size, len(fake), self.n_real)
            # KID reads features; an identity 'feature net' over precomputed features
            kid = KernelInceptionDistance(
                feature=_Identity(self.feature.num_features),
                subsets=self.kid_subsets,
                subset_size=subset,
                sync_on_compute=False,
            )
            kid.update(torch.cat(self._real_feats), real=True)
            kid.update(torch.cat(fake_feats), real=False)
            with fork_rng(self.device):  # manual_seed reseeds every device's generator
                torch.manual_seed(0)  # KID draws random subsets: same draw for every set
                mean, std = kid.compute()
            out["kid"], out["kid_std"] = float(mean), float(std)
            out["kid_subset_size"] = subset
        return out

    @torch.no_grad()
    def real_vs_real(self) -> dict[str, float]:
        """FID and KID between the two halves of the real set, in the same features: the
        score of a perfect generator with as many samples, so a reader can place the others."""
        require(self.n_real >= 4, "a real-vs-real reference needs at least 4 real images")
        feats = torch.cat(self._real_feats)
        half = len(feats) // 2
        a, b = feats[:half], feats[half : 2 * half]
        identity = _Identity(self.feature.num_features)
        fid = FrechetInceptionDistance(feature=identity, sync_on_compute=False)
        fid.update(a, real=True)
        fid.update(b, real=False)
        kid = KernelInceptionDistance(
            feature=identity,
            subsets=self.kid_subsets,
            subset_size=min(self.kid_subset_size, half),
            sync_on_compute=False,
        )
        kid.update(a, real=True)
        kid.update(b, real=False)
        with fork_rng(self.device):
            torch.manual_seed(0)
            kid_mean, _ = kid.compute()
        return {"fid": float(fid.compute()), "kid": float(kid_mean), "n_per_half": half}


# KID keeps every feature vector; ours are 128-d and a few thousand, so its memory warning
# (printed on every run) says nothing
warnings.filterwarnings("ignore", message=r"Metric `Kernel Inception Distance` will save all")


class _Identity(nn.Module):
    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x
