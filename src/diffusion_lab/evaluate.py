"""python -m diffusion_lab.evaluate ckpt_path=... metrics=[fid,kid,clip,accuracy]: eval.json,
eval.md and TensorBoard hparams in the run directory; task=train_clip / task=clip_guide."""

import hydra
from omegaconf import DictConfig

from diffusion_lab.cli import checked_command_line, run_task
from diffusion_lab.evaluation.run import run


@checked_command_line("evaluate")
@hydra.main(version_base="1.3", config_path="../../conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    return run_task(run, cfg)


if __name__ == "__main__":
    main()
