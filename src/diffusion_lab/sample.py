"""python -m diffusion_lab.sample ckpt_path=... n=64: a PNG grid and a tensor file."""

from omegaconf import DictConfig

from diffusion_lab.cli import hydra_entry, run_task
from diffusion_lab.training.run import sample


@hydra_entry("sample")
def main(cfg: DictConfig) -> float | None:
    return run_task(sample, cfg)


if __name__ == "__main__":
    main()
