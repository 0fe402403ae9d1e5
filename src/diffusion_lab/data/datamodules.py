"""LightningDataModules. Every dataset is loaded once into uint8 tensors and batched from memory.

Batches are dicts: "image" float [B, C, H, W] in [-1, 1], "label" long [B], and "attrs"
long [B, A] when the data module is asked for attributes (e.g. stroke "thickness"). With
`masks` set (conditioning=inpaint), every sample also has a fixed inpainting "mask" uint8
[B, 1, H, W] (1 = known pixel, 0 = to fill) and "mask_kind" long [B] (index into masks.kinds).
"""

import contextlib
import gzip
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import Tensor

from diffusion_lab.data.loader import TensorBatches
from diffusion_lab.data.masks import MaskSpec, make_masks
from diffusion_lab.data.patterns import FAMILIES, generate_patterns
from diffusion_lab.errors import UserError, require
from diffusion_lab.files import atomic_write

DIGITS_FILE = Path(__file__).with_name("digits.csv.gz")
# every attribute a data module can provide, and how many values it takes
ATTRIBUTE_VALUES = {"thickness": ("thin", "thick"), "scale": ("fine", "coarse")}


def attribute_sizes(names: list[str] | tuple[str, ...]) -> list[int]:
    """How many values each named attribute takes (the size of its embedding table)."""
    unknown = [n for n in names if n not in ATTRIBUTE_VALUES]
    require(
        not unknown,
        f"conditioning.attributes: {unknown} unknown; choose from {list(ATTRIBUTE_VALUES)}",
    )
    return [len(ATTRIBUTE_VALUES[n]) for n in names]


Split = dict[str, Tensor]


def thickness_attribute(images: Tensor, labels: Tensor) -> Tensor:
    """1 = thick, 0 = thin: ink mass above the median of the image's own class."""
    mass = images.float().flatten(1).mean(1)
    out = torch.zeros_like(labels)
    for c in labels.unique():
        sel = labels == c
        out[sel] = (mass[sel] > mass[sel].median()).long()
    return out


class InMemoryDataModule(pl.LightningDataModule):
    """Shared machinery: sizes, splits, attributes, batching, DDP sharding."""

    class_names: tuple[str, ...] = ()
    available_attributes: tuple[str, ...] = ()

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int,
        batch_size: int = 128,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        train_size: int | None = None,
        val_size: int | None = None,
        attributes: list[str] | tuple[str, ...] = (),
        hflip: bool = False,
        masks: dict | MaskSpec | None = None,
    ) -> None:
        super().__init__()
        require(batch_size >= 1, f"data.batch_size must be >= 1, got {batch_size}")
        # accepted for configs written before 0.2; the data is batched in memory, no workers
        require(
            num_workers == 0,
            f"data.num_workers={num_workers} does nothing: {type(self).__name__} batches "
            "in-memory tensors in the main process; remove the key",
        )
        for name in attributes:
            require(
                name in self.available_attributes,
                f"data.attributes: {name!r} is not provided by {type(self).__name__}; "
                f"available: {list(self.available_attributes)}",
            )
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.seed = seed
        self.train_size, self.val_size = train_size, val_size
        self.attributes = tuple(attributes)
        self.hflip = hflip
        self.masks = MaskSpec.from_config(masks, seed=seed)
        self.train_data: Split | None = None
        self.val_data: Split | None = None

    # subclasses return {"image": uint8 [N, C, H, W], "label": long [N]} for train and val
    def load(self) -> tuple[Split, Split]:
        raise NotImplementedError

    def attribute_values(self, name: str, split: Split) -> Tensor:
        if name == "thickness":
            return thickness_attribute(split["image"], split["label"])
        raise UserError(f"data.attributes: {name!r} is not available")

    @property
    def attribute_sizes(self) -> list[int]:
        return attribute_sizes(self.attributes)

    def _finish(self, split: Split, limit: int | None, what: str) -> Split:
        require(len(split["image"]) > 0, f"the {what} split of {type(self).__name__} is empty")
        if limit is not None:
            require(limit >= 1, f"data.{what}_size must be >= 1 or null, got {limit}")
            split = {k: v[:limit] for k, v in split.items()}
        img = split["image"]
        require(
            tuple(img.shape[1:]) == (self.channels, self.image_size, self.image_size),
            f"{what} images have shape {tuple(img.shape[1:])}, config says "
            f"data.channels={self.channels}, data.image_size={self.image_size}",
        )
        if self.attributes:
            split["attrs"] = torch.stack(
                [self.attribute_values(a, split) for a in self.attributes], 1
            )
        if self.masks is not None:
            # fixed per sample from (masks.seed, index); the val split draws from its own stream
            split["mask"], split["mask_kind"] = make_masks(
                self.masks, len(img), self.image_size, seed_offset=0 if what == "train" else 1
            )
        return split

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is None:
            train, val = self.load()
            self.train_data = self._finish(train, self.train_size, "train")
            self.val_data = self._finish(val, self.val_size, "val")

    def _device(self) -> torch.device | None:
        """The training device when it is an accelerator (data is kept there), else None."""
        trainer = self.trainer
        if trainer is None or trainer.strategy.root_device.type == "cpu":
            return None
        return trainer.strategy.root_device

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _per_rank(self, batch_size: int, world: int) -> int:
        require(
            batch_size % world == 0,
            f"data.batch_size={batch_size} must be divisible by the number of processes ({world})",
        )
        return batch_size // world

    def train_dataloader(self) -> TensorBatches:
        rank, world = self._rank_world()
        return TensorBatches(
            self.train_data,
            self._per_rank(self.batch_size, world),
            shuffle=True,
            seed=self.seed,
            drop_last=len(self.train_data["image"]) >= self.batch_size,
            rank=rank,
            world_size=world,
            hflip=self.hflip,
            epoch_fn=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
            device=self._device(),
        )

    def val_dataloader(self) -> TensorBatches:
        rank, world = self._rank_world()
        return TensorBatches(
            self.val_data,
            max(1, self.val_batch_size // world),
            shuffle=False,
            rank=rank,
            world_size=world,
            device=self._device(),
        )


class PatternDataModule(InMemoryDataModule):
    """The built-in red/blue pattern set: no download, generated in a couple of seconds."""

    class_names = FAMILIES
    available_attributes = ("scale",)

    def __init__(
        self, num_train: int = 50_000, num_val: int = 2_000, image_size: int = 32, **kw
    ) -> None:
        kw.setdefault("channels", 3)
        kw.setdefault("num_classes", len(FAMILIES))
        super().__init__(image_size=image_size, **kw)
        self.num_train, self.num_val = num_train, num_val
        self._scale: dict[int, Tensor] = {}

    def load(self) -> tuple[Split, Split]:
        require(self.num_train >= 1, f"data.num_train must be >= 1, got {self.num_train}")
        out = []
        # validation uses a different seed stream, so it never repeats training images
        for n, seed in ((self.num_train, self.seed), (self.num_val, self.seed + 10_007)):
            images, labels, scale = generate_patterns(n, self.image_size, seed)
            out.append({"image": images, "label": labels, "scale": scale})
        return out[0], out[1]

    def attribute_values(self, name: str, split: Split) -> Tensor:
        return split["scale"] if name == "scale" else super().attribute_values(name, split)

    def _finish(self, split: Split, limit: int | None, what: str) -> Split:
        split = super()._finish(split, limit, what)
        split.pop("scale")
        return split


MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class TorchvisionDataModule(InMemoryDataModule):
    """MNIST, FashionMNIST and CIFAR-10 via torchvision; downloads only with data.download=true."""

    dataset: str = ""
    available_attributes = ("thickness",)

    def __init__(self, root: str = "data", download: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.root = Path(root)
        self.download = download

    def _missing_error(self) -> UserError:
        return UserError(
            f"{self.dataset} not found under data.root={self.root}; pass data.download=true to fetch it"
        )

    @contextlib.contextmanager
    def _one_writer(self, writes: bool) -> Iterator[None]:
        """Every DDP rank, node and sweep job reads the same data.root: one of them at a time
        downloads or unpacks there (a file lock; the others then find the files complete)."""
        if not writes:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(self.root / ".diffusion_lab.lock"):
            yield

    def _torchvision(self, train: bool):
        import torchvision

        cls = getattr(torchvision.datasets, self.dataset)
        try:
            with self._one_writer(self.download):
                return cls(str(self.root), train=train, download=self.download)
        except RuntimeError as e:
            if "not found" in str(e).lower() or "corrupted" in str(e).lower():
                raise self._missing_error() from None
            raise

    def load(self) -> tuple[Split, Split]:
        out = []
        for train in (True, False):
            ds = self._torchvision(train)
            images = torch.as_tensor(ds.data)
            images = images.permute(0, 3, 1, 2) if images.ndim == 4 else images[:, None]
            images = _resize_uint8(images.contiguous(), self.image_size)
            out.append({"image": images, "label": torch.as_tensor(ds.targets).long()})
        return out[0], out[1]


class _MNISTLike(TorchvisionDataModule):
    def __init__(self, **kw) -> None:
        kw.setdefault("image_size", 28)
        kw.setdefault("channels", 1)
        kw.setdefault("num_classes", 10)
        super().__init__(**kw)

    def _missing_error(self) -> UserError:
        raw = self.root / self.dataset / "raw"
        return UserError(
            f"{self.dataset} files not found: put {', '.join(f + '.gz' for f in MNIST_FILES)} "
            f"in {raw}/ (or pass data.download=true to fetch them)"
        )

    def _torchvision(self, train: bool):
        # torchvision only reads the decompressed files; unpack .gz files the user put there
        raw = self.root / self.dataset / "raw"
        packed = [n for n in MNIST_FILES if not (raw / n).exists() and (raw / f"{n}.gz").exists()]
        with self._one_writer(bool(packed)):
            for name in packed:
                if not (raw / name).exists():  # another process may have unpacked it meanwhile
                    with atomic_write(raw / name) as dst, gzip.open(raw / f"{name}.gz") as src:
                        shutil.copyfileobj(src, dst)
        return super()._torchvision(train)


class MNISTDataModule(_MNISTLike):
    dataset = "MNIST"
    class_names = tuple(str(i) for i in range(10))


class FashionMNISTDataModule(_MNISTLike):
    dataset = "FashionMNIST"
    class_names = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip


CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 from the python batches (cifar-10-batches-py/); torchvision fetches them with
    data.download=true. Read directly, so a folder of batches in the standard format works offline."""

    dataset = "CIFAR10"
    class_names = CIFAR10_CLASSES

    def __init__(self, **kw) -> None:
        kw.setdefault("image_size", 32)
        kw.setdefault("channels", 3)
        kw.setdefault("num_classes", 10)
        super().__init__(**kw)

    def load(self) -> tuple[Split, Split]:
        import pickle

        folder = self.root / "cifar-10-batches-py"
        if self.download and not folder.exists():
            self._torchvision(train=True)
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise UserError(
                f"CIFAR10 not found: {folder}/ needs {', '.join(missing)} (extract cifar-10-python.tar.gz "
                "there, or pass data.download=true); for an image folder use data=folder"
            )
        out = []
        for names in (files[:5], files[5:]):
            images, labels = [], []
            for name in names:
                with open(folder / name, "rb") as f:
                    entry = pickle.load(f, encoding="bytes")
                images.append(torch.as_tensor(entry[b"data"]).reshape(-1, 3, 32, 32))
                labels.append(torch.as_tensor(entry[b"labels"]))
            images = _resize_uint8(torch.cat(images), self.image_size)
            out.append({"image": images, "label": torch.cat(labels).long()})
        return out[0], out[1]


class DigitsDataModule(InMemoryDataModule):
    """scikit-learn's 1,797 8x8 digits (ships offline), upscaled; a real, tiny dataset."""

    class_names = tuple(str(i) for i in range(10))
    available_attributes = ("thickness",)

    def __init__(self, val_fraction: float = 0.15, **kw) -> None:
        kw.setdefault("image_size", 16)
        kw.setdefault("channels", 1)
        kw.setdefault("num_classes", 10)
        super().__init__(**kw)
        require(0 < val_fraction < 1, f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.val_fraction = val_fraction

    def load(self) -> tuple[Split, Split]:
        # the UCI hand-written digits (Alpaydin & Kaynak 1998, CC BY 4.0) as scikit-learn ships
        # them: one row per image, 64 pixel values 0..16 and the digit
        with gzip.open(DIGITS_FILE, "rt") as f:
            rows = torch.tensor([[int(v) for v in line.split(",")] for line in f])
        images = rows[:, :64].float().reshape(-1, 1, 8, 8) * (255 / 16)
        images = _resize_uint8(images.round().to(torch.uint8), self.image_size)
        labels = rows[:, 64].long()
        return _split(images, labels, self.val_fraction, self.seed)


class ImageFolderDataModule(InMemoryDataModule):
    """Any folder of images with one subfolder per class (torchvision ImageFolder layout).

    data.root holds the training images; data.val_root optionally holds validation images,
    otherwise data.val_fraction of the training folder is held out.
    """

    available_attributes = ("thickness",)

    def __init__(
        self,
        root: str,
        val_root: str | None = None,
        val_fraction: float = 0.1,
        image_size: int = 32,
        channels: int = 3,
        num_classes: int | None = None,
        **kw,
    ) -> None:
        self.root = Path(root)
        self.val_root = Path(val_root) if val_root else None
        if num_classes is None:
            num_classes = len(self._classes(self.root))
        super().__init__(image_size=image_size, channels=channels, num_classes=num_classes, **kw)
        self.val_fraction = val_fraction
        self.class_names = tuple(self._classes(self.root))

    @staticmethod
    def _classes(root: Path) -> list[str]:
        require(root.is_dir(), f"data.root={root} is not a directory")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        require(
            len(classes) > 0,
            f"data.root={root} has no class subfolders (expected root/<class>/<image>)",
        )
        return classes

    def _read(self, root: Path) -> tuple[Tensor, Tensor]:
        from PIL import Image, UnidentifiedImageError
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import v2

        mode = "L" if self.channels == 1 else "RGB"
        tf = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(self.image_size, antialias=True),
                v2.CenterCrop(self.image_size),
            ]
        )
        folder = ImageFolder(str(root), loader=lambda p: p)
        require(
            folder.classes == list(self.class_names),
            f"{root} has other class folders than {self.root}",
        )
        require(len(folder.samples) > 0, f"no images found under {root}")
        images = torch.empty(
            len(folder.samples), self.channels, self.image_size, self.image_size, dtype=torch.uint8
        )
        for i, (path, _) in enumerate(folder.samples):
            try:
                with Image.open(path) as im:
                    images[i] = tf(im.convert(mode))
            except (UnidentifiedImageError, OSError) as e:
                raise UserError(f"cannot read image {path}: {e.__class__.__name__}") from None
        return images, torch.tensor(folder.targets).long()

    def load(self) -> tuple[Split, Split]:
        images, labels = self._read(self.root)
        if self.val_root is not None:
            val_images, val_labels = self._read(self.val_root)
            return {"image": images, "label": labels}, {"image": val_images, "label": val_labels}
        return _split(images, labels, self.val_fraction, self.seed)


def _split(images: Tensor, labels: Tensor, val_fraction: float, seed: int) -> tuple[Split, Split]:
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(len(images) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    return {"image": images[train], "label": labels[train]}, {
        "image": images[val],
        "label": labels[val],
    }


def _resize_uint8(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.round().clamp(0, 255).to(torch.uint8)
