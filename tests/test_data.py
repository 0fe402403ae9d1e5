"""A short training run through every data module, on real data where the data is real."""

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
