"""python -m diffusion_lab.train [overrides]: train a diffusion model from conf/train.yaml."""

from omegaconf import DictConfig

from diffusion_lab.cli import hydra_entry, run_task
from diffusion_lab.training.run import train


@hydra_entry("train")
def main(cfg: DictConfig) -> float | None:
    return run_task(train, cfg)


if __name__ == "__main__":
    main()
