"""`python -m tests.requeue_helpers <train overrides>`: diffusion_lab.train under a stand-in for
submitit's SIGUSR2 handler, which requeues the job and exits with status -1 (255)."""

import os
import signal
import sys
from pathlib import Path


def requeue_like_submitit(signum: int, frame) -> None:
    Path(os.environ["REQUEUE_MARKER"]).write_text(signal.Signals(signum).name)
    sys.exit(-1)


if __name__ == "__main__":
    signal.signal(signal.SIGUSR2, requeue_like_submitit)
    from diffusion_lab.app.train import main

    main()
