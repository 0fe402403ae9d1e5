"""Kill training at random moments, resume, and check every checkpoint at the end.

    python scripts/reliability.py [--kills 5] [--seed 0] [--out outputs/reliability]

Each round starts (or resumes, with ckpt_path=last) a small pattern-set training run in one run
directory and SIGKILLs it after a random delay — mid-step, mid-validation or mid-save. At the end
the run is finished without interruption, then every checkpoint must load and the final step
count must equal the uninterrupted total. Prints kills survived / attempted.
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

STEPS_PER_EPOCH, EPOCHS = 20, 120
ARGS = [
    "data.num_train=640",
    "data.num_val=64",
    "data.image_size=16",
    "data.batch_size=32",
    "model.channels=[16,32]",
    "model.time_dim=32",
    f"trainer.max_epochs={EPOCHS}",
    "callbacks.last_checkpoint.every_n_train_steps=5",
    "callbacks.sample_grid.every_n_epochs=2",
    "callbacks.sample_grid.n=16",
    "sampler.steps=10",
    "callbacks.progress_bar=null",
]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/reliability")
    args = p.parse_args()
    rng = random.Random(args.seed)
    run_dir = Path(args.out).resolve() / time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [sys.executable, "-m", "diffusion_lab.train", *ARGS, f"hydra.run.dir={run_dir}"]
    last = run_dir / "checkpoints" / "last.ckpt"
    survived = attempted = 0
    for i in range(args.kills):
        resume = ["ckpt_path=last"] if last.exists() else []
        proc = subprocess.Popen(cmd + resume, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(8, 20)  # ~6 s of start-up, then training
        try:
            proc.wait(timeout=delay)
            print(f"round {i + 1}: training finished before the kill at {delay:.1f} s")
            break
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            attempted += 1
        step = torch.load(last, weights_only=False)["global_step"] if last.exists() else None
        ok = step is not None
        survived += ok
        print(f"round {i + 1}: killed at {delay:.1f} s, last.ckpt at step {step}", flush=True)
    final = subprocess.run(
        cmd + (["ckpt_path=last"] if last.exists() else []), capture_output=True, text=True
    )
    problems = (
        []
        if final.returncode == 0
        else [f"final run failed: {final.stderr.strip().splitlines()[-1:]}"]
    )
    for ckpt in sorted((run_dir / "checkpoints").glob("*.ckpt")):
        try:
            torch.load(ckpt, weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure to load is what we look for
            problems.append(f"{ckpt.name} does not load: {e}")
    step = torch.load(last, weights_only=False)["global_step"]
    if step != STEPS_PER_EPOCH * EPOCHS:
        problems.append(f"final step {step} != {STEPS_PER_EPOCH * EPOCHS}")
    print(f"kills survived: {survived}/{attempted}; final step {step}; checkpoints: "
          f"{len(list((run_dir / 'checkpoints').glob('*.ckpt')))} load")  # fmt: skip
    for problem in problems:
        print("PROBLEM:", problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
