"""python -m diffusion_lab.train [overrides]: train a diffusion model from conf/train.yaml."""

import hydra
from omegaconf import DictConfig

from diffusion_lab.cli import checked_command_line, run_task
from diffusion_lab.training.run import train


@checked_command_line("train")
@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_task(train, cfg)


if __name__ == "__main__":
    main()
