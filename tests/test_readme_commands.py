"""The README's commands, run as it prints them (placeholders filled in), in an empty folder:
the README cannot drift from the code. The run they start from is the README's own
`debug=fast` training, so every command is small."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def readme_line(start: str) -> str:
    """The README command that starts with `start`, without its comment."""
    for line in README.splitlines():
        if line.startswith(start):
            return line.split("  #")[0].strip()
    raise AssertionError(f"the README no longer has a command starting {start!r}")


class Shell:
    def __init__(self, cwd: Path) -> None:
        self.cwd, self.fill = cwd, {}

    def run(self, start: str, **fill: str) -> subprocess.CompletedProcess:
        command = readme_line(start)
        for placeholder, value in {**self.fill, **fill}.items():
            command = command.replace(placeholder, value)
        args = shlex.split(command)
        assert args[:2] == ["python", "-m"], command
        res = subprocess.run(
            [sys.executable, *args[1:]], cwd=self.cwd, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, f"{command}\n{res.stderr[-3000:]}"
        return res


@pytest.fixture(scope="module")
def shell(tmp_path_factory) -> Shell:
    sh = Shell(tmp_path_factory.mktemp("readme"))
    sh.run("python -m diffusion_lab.train debug=fast")
    (run,) = (sh.cwd / "outputs" / "train" / "runs").iterdir()
    sh.fill = {"<run>": run.name, "...": f"{run}/checkpoints/last.ckpt"}
    sh.run_dir = run
    return sh


def test_sample_and_inpaint(shell):
    shell.run(
        "python -m diffusion_lab.sample ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt n=64"
    )
    shell.run("python -m diffusion_lab.sample mode=inpaint ckpt_path=... n=8")
    (sample_dir,) = [
        d
        for d in (shell.cwd / "outputs" / "sample" / "runs").iterdir()
        if (d / "samples.png").exists()
    ]
    assert (sample_dir / "samples.pt").is_file()
    inpainted = [
        d
        for d in (shell.cwd / "outputs" / "sample" / "runs").iterdir()
        if (d / "inpaint_all.png").exists()
    ]
    assert len(inpainted) == 1
    assert json.loads((inpainted[0] / "inpaint_metrics.json").read_text())["n"] == 8


def test_evaluate(shell):
    shell.run(
        "python -m diffusion_lab.evaluate ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt n=200"
    )
    results = json.loads((shell.run_dir / "eval.json").read_text())
    assert results["n_samples"] == 200 and 0 <= results["accuracy"] <= 1
    # the reference that places FID: two halves of the real set score far below a 2-step model
    assert results["real_vs_real"]["fid"] < results["fid"]
    assert "reference: two halves of the real set" in (shell.run_dir / "eval.md").read_text()


def test_figures(shell):
    out = shell.run(
        "python -m diffusion_lab.viz all --ckpt outputs/train/runs/<run>/checkpoints/last.ckpt"
    )
    names = {Path(line).stem for line in out.stdout.split()}
    assert {"forward", "embedding", "progression", "triplets"} <= names
    shell.run("python -m diffusion_lab.viz forward")
    assert len(list((shell.cwd / "outputs" / "viz" / "runs").iterdir())) == 2  # one folder each


def test_sweep_and_compare(shell):
    shell.run("python -m diffusion_lab.train -m model=basic_unet,efficient_unet debug=fast")
    (sweep,) = (shell.cwd / "outputs" / "train" / "multiruns").iterdir()
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["global_step"] == 2
    shell.run(
        "python -m diffusion_lab.compare outputs/train/multiruns/<time>", **{"<time>": sweep.name}
    )
    report = (sweep / "comparison.md").read_text()
    assert "basic_unet" in report and "efficient_unet" in report


def test_resume_in_place(shell):
    shell.run("python -m diffusion_lab.train debug=fast trainer.max_epochs=2 hydra.run.dir=")
    metrics = json.loads((shell.run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["epochs"] == 2
