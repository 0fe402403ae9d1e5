"""Sample from a trained checkpoint in plain PyTorch: no Lightning, no Hydra, no Trainer.

    python examples/sample_from_checkpoint.py --ckpt outputs/.../checkpoints/last.ckpt \
        [--sampler dpmpp_2m --steps 10] [--n 16] [--device cuda] [--out samples]

Writes samples.png (n images), inpaint.png (the left half of the first images kept, the
right half filled) and trajectory.png (x_t after every step of one image, top: x_t,
bottom: the predicted x0), and prints the network calls per image.
"""

import argparse
import sys
from pathlib import Path

import torch
from torchvision.utils import save_image

from diffusion_lab.sampling import DiffusionPipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a .ckpt file from a diffusion-lab run")
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="samples")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # config + EMA weights, loaded with torch.load(weights_only=True)
    pipe = DiffusionPipeline.from_checkpoint(args.ckpt, device=args.device)
    sampler = {"name": args.sampler, "steps": args.steps, "spacing": "karras"}

    # 1. samples: the classes in turn for a class-conditional model; image i's noise comes
    #    from (seed, i), so batch_size changes nothing but memory
    images = pipe.sample(args.n, sampler=sampler, seed=0, batch_size=8)
    save_image((images.cpu() + 1) / 2, out / "samples.png", nrow=int(args.n**0.5), padding=1)

    # 2. inpainting: keep the left half of the first four samples, fill the right half
    known = images[:4]
    mask = torch.zeros(len(known), 1, *known.shape[2:], device=known.device)
    mask[..., : known.shape[-1] // 2] = 1
    filled = pipe.inpaint(known, mask, sampler=sampler, seed=1)
    save_image((torch.cat([known, filled]).cpu() + 1) / 2, out / "inpaint.png", nrow=4, padding=1)

    # 3. the trajectory of one image: x_t and the predicted x0 after every step
    traj = pipe.trajectory(1, sampler=sampler, seed=0)
    frames = torch.cat([traj.x_t[:, 0], traj.x0[:, 0]])
    save_image((frames + 1) / 2, out / "trajectory.png", nrow=len(traj.times), padding=1)

    frameworks = [m for m in ("lightning", "pytorch_lightning", "hydra") if m in sys.modules]
    assert not frameworks, f"imported {frameworks}"
    print(
        f"{len(images)} samples, {pipe.nfe(sampler)} network calls per image "
        f"({args.sampler}, {len(traj.times)} steps) -> {out}"
    )


if __name__ == "__main__":
    main()
