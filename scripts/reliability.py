"""Kill training at random moments, resume, and check the continuation is bit-identical.

    python scripts/reliability.py [--kills 20] [--seed 0] [--out outputs/reliability]

Each round starts (or resumes, with ckpt_path=last) a small pattern-set training run in one run
directory and SIGKILLs it at a random moment once training is under way: mid-step,
mid-validation, mid-sample-grid or mid-save (last.ckpt every 5 steps). After each kill last.ckpt
must load. At the end the run is finished without interruption; every checkpoint must load, and
the final weights and optimizer state must equal, bit for bit, those of the same run trained
once without a kill (float32, deterministic). Prints one result line; exit 1 on any problem.
About 6 minutes for 20 kills on 2 CPU cores.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

STEPS_PER_EPOCH, EPOCHS = 20, 100
ARGS = [
    "data.num_train=640",
    "data.num_val=64",
    "data.image_size=16",
    "data.batch_size=32",
    "model.channels=[16,32]",
    "model.time_dim=32",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.deterministic=true",
    "trainer.precision=32",  # bit-identical on any CPU (bf16 is the default on AMX CPUs)
    "callbacks.last_checkpoint.every_n_train_steps=5",
    "callbacks.sample_grid.every_n_epochs=2",
    "callbacks.sample_grid.n=16",
    "callbacks.analysis_figures=null",
    "sampler.steps=10",
    "callbacks.progress_bar=null",
]
STARTED = "Run directory:"  # logged just before trainer.fit
MAX_AFTER_START = 6.0  # seconds: kills land within the first ~100 steps of each round


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def starts(log: Path) -> int:
    return log.read_text(errors="replace").count(STARTED) if log.exists() else 0


def run_round(cmd: list[str], log: Path, delay: float) -> bool:
    """Start the run, SIGKILL it `delay` s after it reaches trainer.fit; False if it finished."""
    before = starts(log)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while starts(log) == before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def final_state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load(path)
    state = {f"model.{k}": v for k, v in ckpt["state_dict"].items()}
    for i, opt in enumerate(ckpt.get("optimizer_states", [])):
        for pid, s in opt["state"].items():
            state.update({f"opt{i}.{pid}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return state


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/reliability")
    args = p.parse_args()
    if args.kills < 1:
        p.error(f"--kills={args.kills} must be >= 1")
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    base = Path(args.out).resolve() / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir, reference_dir = base / "killed", base / "uninterrupted"
    cmd = [sys.executable, "-m", "diffusion_lab.train", *ARGS, f"hydra.run.dir={run_dir}"]
    last, log = run_dir / "checkpoints" / "last.ckpt", run_dir / "train.log"
    survived = attempted = 0
    problems: list[str] = []
    previous = -1
    for i in range(args.kills):
        resume = ["ckpt_path=last"] if last.exists() else []
        delay = rng.uniform(0, MAX_AFTER_START)
        if not run_round(cmd + resume, log, delay):
            print(f"round {i + 1}: training finished before the kill", flush=True)
            break
        attempted += 1
        try:
            step = load(last)["global_step"] if last.exists() else None
        except Exception as e:  # noqa: BLE001 - a last.ckpt that does not load is the failure
            step = None
            problems.append(f"round {i + 1}: last.ckpt does not load: {e}")
        ok = step is not None and step >= previous
        survived += ok
        previous = step if step is not None else previous
        print(f"round {i + 1}: killed {delay:.1f} s into training, last.ckpt at step {step}", flush=True)  # fmt: skip
    final = subprocess.run(
        cmd + (["ckpt_path=last"] if last.exists() else []), capture_output=True, text=True
    )
    if final.returncode != 0:
        problems.append(f"final run failed: {final.stderr.strip().splitlines()[-1:]}")
    reference = subprocess.run(
        [sys.executable, "-m", "diffusion_lab.train", *ARGS, f"hydra.run.dir={reference_dir}"],
        capture_output=True,
        text=True,
    )
    if reference.returncode != 0:
        problems.append(f"uninterrupted run failed: {reference.stderr.strip().splitlines()[-1:]}")
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    for ckpt in ckpts:
        try:
            load(ckpt)
        except Exception as e:  # noqa: BLE001 - any failure to load is what we look for
            problems.append(f"{ckpt.name} does not load: {e}")
    step, identical = None, False
    if not problems:
        step = load(last)["global_step"]
        if step != STEPS_PER_EPOCH * EPOCHS:
            problems.append(f"final step {step} != {STEPS_PER_EPOCH * EPOCHS}")
        a, b = final_state(last), final_state(reference_dir / "checkpoints" / "last.ckpt")
        identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        if not identical:
            differ = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
            problems.append(f"continuation differs from the uninterrupted run: {differ[:3]}")
    print(f"kills survived: {survived}/{attempted}; final step {step}; "
          f"bit-identical to the uninterrupted run: {'yes' if identical else 'no'}; "
          f"checkpoints: {len(ckpts)} load; {time.perf_counter() - t0:.0f} s")  # fmt: skip
    if attempted < args.kills:
        problems.append(f"only {attempted} of {args.kills} kills landed (training finished)")
    for problem in problems:
        print("PROBLEM:", problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
