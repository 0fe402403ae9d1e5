"""Shared fixtures: compose configs with hydra.compose, tiny sizes, real data from ../shared."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion_lab.app.config import compose_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED = Path(os.environ.get("DIFFUSION_LAB_SHARED", ROOT.parent / "shared")) / "datasets"

# pytest -n 2 (pyproject's addopts): one thread per worker, and for the commands it starts
# (a command that imports this file, e.g. for a test callback, keeps the threads it was given)
_THREADS = int(
    os.environ.get("OMP_NUM_THREADS")
    or max(1, 2 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
)
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # both, as torch.set_num_threads sets both
    os.environ.setdefault(_var, str(_THREADS))
torch.set_num_threads(_THREADS)

# Everything in the suite is tiny: a few batches of 8-16 px images through 8-32 channel nets.
TINY_TRAINER = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 3,
    "trainer.limit_val_batches": 2,
    "trainer.val_check_interval": None,  # experiments that validate every N steps
    "trainer.log_every_n_steps": 1,
    "trainer.enable_model_summary": False,
    # float32 on every CPU (the default is bf16-mixed on AMX CPUs), so that exact comparisons
    # with the sampler called directly hold; the precision tests set it themselves
    "trainer.precision": "32",
    "sampler.steps": 3,
    "callbacks.sample_grid.n": 8,
    "callbacks.progress_bar": None,
    "callbacks.analysis_figures": None,  # test_viz.py switches it on
    "data.batch_size": 8,
    "data.train_size": 64,
    "data.val_size": 16,
    "data.num_train": 96,
    "data.num_val": 16,
    "data.image_size": 16,
}
TINY_MODELS = {
    "SimpleUNet": {"channels": [8, 16], "time_dim": 16},
    "GeluUNet": {"channels": [8, 16], "groups": 4, "time_dim": 16},
    "LightUNet": {"channels": [8, 16], "groups": 4, "time_dim": 16},
    "AttnUNet": {"base": 8, "mults": [1, 2], "attn_resolutions": [8], "heads": 2, "groups": 4},
}
# the same settings as command-line overrides, for subprocess tests
TINY_PATTERNS = [
    "data.num_train=96",
    "data.num_val=16",
    "data.image_size=16",
    "data.batch_size=8",
    "model.channels=[8,16]",
    "model.time_dim=16",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "sampler.steps=3",
    "callbacks.sample_grid.n=8",
    "callbacks.progress_bar=null",
    "callbacks.analysis_figures=null",
]


def shrink(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Apply the tiny settings to every key the test did not set itself."""
    explicit = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    model_kind = cfg.model._target_.rsplit(".", 1)[-1]
    settings = {**TINY_TRAINER, **{f"model.{k}": v for k, v in TINY_MODELS[model_kind].items()}}
    with open_dict(cfg):
        for key, value in settings.items():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent)
            # a test that sets a key (or something inside it) keeps its own value
            if key in explicit or any(e.startswith(key + ".") for e in explicit) or node is None:
                continue
            if leaf in node or parent in ("trainer", "model"):
                node[leaf] = value
    return cfg


def compose_cfg(
    tmp_path: Path, overrides: list[str], config_name: str = "train", tiny: bool = False
) -> DictConfig:
    cfg = compose_config(config_name, overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(tmp_path)
    return shrink(cfg, overrides) if tiny else cfg


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str, tiny: bool = True, out: Path | None = None) -> DictConfig:
        return compose_cfg(out or tmp_path, list(overrides), tiny=tiny)

    return make


def copy_dataset(name: str, dest: Path) -> Path:
    """Copy ../shared/datasets/<name> into a writable root (torchvision unpacks next to the .gz)."""
    src = SHARED / name
    if not src.exists():
        pytest.skip(f"{src} not present")
    shutil.copytree(src, dest / name)
    return dest


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    return copy_dataset("MNIST", tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory) -> Path:
    return copy_dataset("FashionMNIST", tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="session")
def cifar_folder() -> Path:
    path = SHARED / "CIFAR10-subset" / "imagefolder"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def cifar_batches(tmp_path_factory, cifar_folder) -> Path:
    """The CIFAR-10 subset re-packed in the python-batches format torchvision downloads."""
    import pickle

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    classes = sorted(p.name for p in (cifar_folder / "train").iterdir())
    for split, names in (
        ("train", [f"data_batch_{i}" for i in range(1, 6)]),
        ("test", ["test_batch"]),
    ):
        files = sorted((cifar_folder / split).glob("*/*.png"))[:100]
        data = np.stack(
            [np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1).reshape(-1) for f in files]
        )
        labels = [classes.index(f.parent.name) for f in files]
        for i, name in enumerate(names):
            part = slice(i * len(files) // len(names), (i + 1) * len(files) // len(names))
            with open(folder / name, "wb") as fh:
                pickle.dump({b"data": data[part], b"labels": labels[part]}, fh)
    return root


def run_module(
    module: str, *args: str, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m diffusion_lab.<module> args...` from the repository root, as a user runs it
    (`env`: variables added to this process's environment)."""
    return subprocess.run(
        [sys.executable, "-m", f"diffusion_lab.{module}", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )


# the longest files first: xdist hands files to the two workers in this order, so the long
# ones do not start last and leave one worker idle at the end
LONGEST_FIRST = (
    "test_readme_commands.py",
    "test_reliability.py",
    "test_faults.py",
    "test_custom_model.py",
    "test_sweep.py",
    "test_ddp.py",
    "test_compare.py",
    "test_benchmarks.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
