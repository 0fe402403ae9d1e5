"""python -m diffusion_lab.sample ckpt_path=... n=64: a PNG grid and a tensor file."""

import hydra
from omegaconf import DictConfig

from diffusion_lab.cli import checked_command_line, run_task
from diffusion_lab.training.run import sample


@checked_command_line("sample")
@hydra.main(version_base="1.3", config_path="../../conf", config_name="sample")
def main(cfg: DictConfig) -> float | None:
    return run_task(sample, cfg)


if __name__ == "__main__":
    main()
