"""A short training run through every data module, on real data where the data is real."""

import multiprocessing
import time
from pathlib import Path

import pytest

from diffusion_lab.app.train import train
from diffusion_lab.data.datamodules import MNISTDataModule, thickness_attribute
from diffusion_lab.errors import UserError


def test_patterns_datamodule_batches(make_cfg):
    from diffusion_lab.app.build import build_datamodule

    cfg = make_cfg()
    dm = build_datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 16, 16)
    assert batch["image"].min() == -1 and batch["image"].max() == 1
    assert batch["label"].max() < 8


def test_digits_trains(make_cfg):
    metrics = train(make_cfg("data=digits", "data.image_size=8", "data.batch_size=8"))
    assert metrics["val/loss"] > 0


def test_mnist_trains_on_real_files(make_cfg, mnist_root):
    metrics = train(
        make_cfg("data=mnist", f"data.root={mnist_root}", "data.image_size=16", "data.val_size=32")
    )
    assert metrics["global_step"] == 3


def test_fashion_mnist_trains_on_real_files(make_cfg, fashion_root):
    metrics = train(
        make_cfg(
            "data=fashion_mnist",
            f"data.root={fashion_root}",
            "data.image_size=16",
            "data.val_size=32",
        )
    )
    assert metrics["global_step"] == 3


def test_cifar_subset_trains_via_image_folder(make_cfg, cifar_folder):
    metrics = train(
        make_cfg(
            "data=folder",
            f"data.root={cifar_folder}/train",
            f"data.val_root={cifar_folder}/test",
            "data.image_size=16",
            "data.train_size=64",
            "data.val_size=16",
        )
    )
    assert metrics["global_step"] == 3


def test_missing_mnist_names_the_files(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz.*MNIST/raw"):
        dm.setup("fit")


def test_thickness_splits_each_class_at_its_median():
    import torch

    images = torch.arange(8, dtype=torch.uint8)[:, None, None, None].expand(8, 1, 2, 2) * 10
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert thickness_attribute(images, labels).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]


class SlowDownload:
    """A stand-in torchvision dataset whose download takes a while and must not overlap another."""

    def __init__(self, root: str, train: bool, download: bool) -> None:
        root_dir = Path(root)
        busy = root_dir / "busy"
        assert not busy.exists(), "two downloads at once"
        if download and not (root_dir / "done").exists():
            busy.touch()
            time.sleep(0.5)
            with open(root_dir / "downloads", "a") as f:
                f.write("x")
            (root_dir / "done").touch()
            busy.unlink()


def test_processes_sharing_a_data_root_download_it_once(tmp_path, monkeypatch):
    """DDP ranks, nodes and sweep jobs all set up the same data.root: one downloads."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "MNIST", SlowDownload)
    dm = MNISTDataModule(root=str(tmp_path), download=True)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=dm._torchvision, args=(True,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert (tmp_path / "downloads").read_text() == "x"
