"""python -m diffusion_lab.evaluate ckpt_path=... metrics=[fid,kid,clip,accuracy]: eval.json,
eval.md and TensorBoard hparams in the run directory; task=train_clip / task=clip_guide."""

from omegaconf import DictConfig

from diffusion_lab.cli import hydra_entry, run_task
from diffusion_lab.evaluation.run import run


@hydra_entry("evaluate")
def main(cfg: DictConfig) -> float | None:
    return run_task(run, cfg)


if __name__ == "__main__":
    main()
