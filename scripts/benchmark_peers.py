"""Quality per CPU-minute against the peers: the same wall-clock training budget on the same
machine, one system after another, on MNIST, scored by the same judge.

    python scripts/benchmark_peers.py                       # 3 x 10 min of training, then scoring
    python scripts/benchmark_peers.py --quick               # tiny end-to-end check (3-5 min)
    python scripts/benchmark_peers.py --score-only          # re-score the checkpoints in --out

Needs the peers: pip install -e ".[peers]" (diffusers, denoising-diffusion-pytorch).

The systems, each trained for --minutes of wall clock from the start of its training loop, in
its own Python process (one after another, never concurrently), on the same 60,000 MNIST
training images (../shared/datasets, copied to a temporary root):

  ours        `experiment=mnist_class_cfg` (GELU U-Net, class-conditional, classifier-free
              guidance, cosine betas, T=100, v-prediction, batch 64) through the framework's
              train() with trainer.max_time; sampled with its configured DDIM and guidance scale.
  diffusers   the training loop of diffusers' examples/unconditional_image_generation/
              train_unconditional.py with its defaults (AdamW 1e-4, betas (0.95, 0.999), weight
              decay 1e-6, eps 1e-8, cosine lr with 500 warm-up steps over 100 epochs, EMA 0.9999
              with warm-up power 3/4, DDPM 1000 linear betas, epsilon, batch 16, gradient
              clipping 1.0, no flips), its UNet2DModel narrowed to our parameter count and made
              class-conditional with its own class embedding (num_class_embeds=10; no label
              dropout, so no guidance); sampled with DDIMScheduler (eta 0).
  lucidrains  denoising_diffusion_pytorch's Unet (dim narrowed to our parameter count) in its
              GaussianDiffusion (defaults: T=1000, sigmoid betas, pred_v) trained by its Trainer
              with its defaults (Adam 1e-4, betas (0.9, 0.99), batch 16, EMA 0.995 every 10
              steps, gradient clipping 1.0) on a folder of the same images as PNGs; no flips, no
              FID during training, no sample grids inside the budget. Unconditional: its
              requested-digit accuracy does not apply. Sampled with its own DDIM
              (sampling_timesteps < timesteps).

Every system is checkpointed at --milestones minutes and at the end, and each checkpoint is
scored after all training is done (scoring never eats a budget): FID in the features of the
project's MNIST classifier (metrics/classifier.py, trained on the training set) against the
2,000 validation images, the same seed and --n samples (--n-mid at the intermediate
milestones) for every system, and how often that classifier sees the requested digit. The
peers sample with --sampling-steps steps (default 50, as our configured DDIM); their own
defaults, 1000 ancestral steps, take hours on a CPU for 1,000 images.

Writes <out>/peers.json (the machine, every setting, every score), <out>/train_<system>.log,
a FID-vs-minutes plot (--plot, default docs/img/peers_fid_vs_minutes.png; --quick writes it
into --out) and prints a markdown table.
"""

import os

if __name__ == "__main__":
    # no per-step progress bars from the lucidrains sampler (tqdm reads this when first
    # imported; its Trainer's own bar, created with disable=False, still goes to the log)
    os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from diffusion_lab.hardware import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
SYSTEMS = ("ours", "diffusers", "lucidrains")
EXPERIMENT = "mnist_class_cfg"
NUM_CLASSES = 10
IMAGE_SIZE = 28

# diffusers' train_unconditional.py: its UNet is six levels (128, 128, 256, 256, 512, 512),
# attention at the fifth; 28x28 allows two down-samplings, so its last three levels, widths
# (w, 2w, 2w) like (256, 512, 512)
DIFFUSERS_DOWN = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
DIFFUSERS_UP = ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
DIFFUSERS_TRAIN = {
    "lr": 1e-4,
    "adam_beta1": 0.95,
    "adam_beta2": 0.999,
    "adam_weight_decay": 1e-6,
    "adam_epsilon": 1e-8,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 500,
    "num_epochs": 100,  # the cosine schedule spans these
    "ema_max_decay": 0.9999,
    "ema_inv_gamma": 1.0,
    "ema_power": 0.75,
    "ddpm_num_steps": 1000,
    "ddpm_beta_schedule": "linear",
    "prediction_type": "epsilon",
    "train_batch_size": 16,
    "max_grad_norm": 1.0,
    "random_flip": False,
}
# denoising_diffusion_pytorch's Unet at 28x28: dim_mults (1, 2, 4) (its default (1, 2, 4, 8)
# needs a side divisible by 8)
LUCID_DIM_MULTS = (1, 2, 4)
LUCID_TRAINER = {  # Trainer's keyword defaults that we change; everything else is its default
    "augment_horizontal_flip": False,  # digits
    "calculate_fid": False,  # needs Inception weights; we score with the common judge
    "save_and_sample_every": 10**9,  # no 1000-step sample grids inside the budget
}


# ---- the parameter match ---------------------------------------------------------------------
def match_width(
    count: Callable[[int], int], target: int, candidates: Iterable[int]
) -> tuple[int, int]:
    """The candidate width whose parameter count is nearest `target` (the smaller width on a
    tie); returns (width, its count). Candidates in increasing order, counts growing with the
    width: the search stops at the first count above the target."""
    best = None
    for w in candidates:
        n = count(w)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (w, n)
        if n > target:
            break
    if best is None:
        raise ValueError("match_width needs at least one candidate width")
    return best


def rel_diff(n: int, target: int) -> float:
    return (n - target) / target


def norm_groups(width: int, most: int = 32) -> int:
    """GroupNorm groups for a narrowed diffusers UNet: its default 32 where the width allows,
    else the largest divisor of the width below that."""
    return max(g for g in range(1, min(most, width) + 1) if width % g == 0)


def diffusers_unet(width: int):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=1,
        out_channels=1,
        layers_per_block=2,
        block_out_channels=(width, 2 * width, 2 * width),
        down_block_types=DIFFUSERS_DOWN,
        up_block_types=DIFFUSERS_UP,
        norm_num_groups=norm_groups(width),
        class_embed_type=None,
        num_class_embeds=NUM_CLASSES,
    )


def lucid_unet(dim: int):
    from denoising_diffusion_pytorch import Unet

    return Unet(dim=dim, dim_mults=LUCID_DIM_MULTS, channels=1)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def our_config(overrides: list[str], train_size: int | None = None):
    """The experiment's config; `train_size`: the first that many training images (all 60,000
    when None), for every system alike."""
    from diffusion_lab.app.config import compose_config

    if train_size:
        overrides = [*overrides, f"data.train_size={train_size}"]
    return compose_config("train", [f"experiment={EXPERIMENT}", *overrides])


def our_params() -> int:
    from diffusion_lab.app.build import build_net

    return n_params(build_net(our_config([])))


def peer_width(system: str, target: int) -> tuple[int, int]:
    if system == "diffusers":
        return match_width(lambda w: n_params(diffusers_unet(w)), target, range(8, 129, 4))
    return match_width(lambda d: n_params(lucid_unet(d)), target, range(8, 129, 2))


# ---- the machine -----------------------------------------------------------------------------
def machine() -> dict:
    import diffusers

    try:
        from denoising_diffusion_pytorch.version import __version__ as lucid_version
    except ImportError:
        lucid_version = None
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "denoising_diffusion_pytorch": lucid_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


_START = time.monotonic()


def say(message: str) -> None:
    """A progress line with the minutes since the script started."""
    m, s = divmod(int(time.monotonic() - _START), 60)
    print(f"[{m:02d}:{s:02d}] {message}", flush=True)


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ---- training (each system in its own process: python benchmark_peers.py --train SYSTEM) -----
def budget_points(minutes: float, milestones: list[float]) -> list[int]:
    """Checkpoint times in whole seconds: the milestones before the budget, then the budget."""
    end = max(1, round(minutes * 60))
    mids = sorted({round(m * 60) for m in milestones if 0 < round(m * 60) < end})
    return [*mids, end]


class MilestoneCheckpoints(pl.Callback):
    """Lightning callback (built by Hydra from the run's callbacks config): a checkpoint at the
    first batch end past each point (seconds since on_train_start, the clock Lightning's
    max_time Timer starts there too); a point the Timer stops just short of is saved at the end."""

    def __init__(self, points: list[int], dirpath: str) -> None:
        self.points, self.dirpath = list(points), Path(dirpath)
        self.saved: list[dict] = []
        self.t0 = 0.0

    def on_train_start(self, trainer, module) -> None:
        self.t0 = time.monotonic()

    def _save(self, trainer, point: int) -> None:
        seconds = time.monotonic() - self.t0
        path = self.dirpath / f"t{point:05d}.ckpt"
        trainer.save_checkpoint(path)
        self.saved.append(
            {"point_s": point, "seconds": seconds, "step": trainer.global_step, "file": str(path)}
        )
        (self.dirpath / "milestones.json").write_text(json.dumps(self.saved, indent=2))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        elapsed = time.monotonic() - self.t0
        while self.points and elapsed >= self.points[0]:
            self._save(trainer, self.points.pop(0))

    def on_train_end(self, trainer, module) -> None:
        while self.points:
            self._save(trainer, self.points.pop(0))


def train_ours(args, data_root: Path, out: Path, points: list[int]) -> dict:
    from omegaconf import OmegaConf, open_dict

    from diffusion_lab.app.train import train

    def plain(node):
        return OmegaConf.to_container(node, resolve=True)

    total = points[-1]
    overrides = [
        f"data.root={data_root}",
        f"trainer.max_time=00:{total // 3600:02d}:{total // 60 % 60:02d}:{total % 60:02d}",
        "trainer.max_epochs=100000",  # the budget, not the experiment's 30 epochs, ends it
        "callbacks.progress_bar=null",
        "callbacks.sample_grid=null",  # no preview grids inside (or after) the budget
        "callbacks.analysis_figures=null",
        "trainer.enable_model_summary=false",
    ]
    if args.precision != "auto":
        overrides.append(f"trainer.precision={args.precision}")
    if args.quick:  # the validation Lightning runs when the budget stops it, shortened
        overrides.append("trainer.limit_val_batches=2")
    cfg = our_config(overrides, args.train_size)
    with open_dict(cfg):
        cfg.paths.root_dir, cfg.paths.output_dir = str(ROOT), str(out / "run")
        cfg.callbacks.milestones = {
            "_target_": "__main__.MilestoneCheckpoints",
            "points": points,
            "dirpath": str(out / "milestones"),
        }
    t0 = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - t0
    saved = json.loads((out / "milestones" / "milestones.json").read_text())
    return {
        "params": int(metrics["params"]),
        "batch_size": int(cfg.data.batch_size),
        "precision": str(cfg.trainer.precision),
        "milestones": saved,
        "process_wall_s": wall,
        "settings": {
            "experiment": EXPERIMENT,
            "model": str(cfg.model._target_),
            "channels": list(cfg.model.channels),
            "timesteps": int(cfg.schedule.timesteps),
            "schedule": str(cfg.schedule.name),
            "optimizer": {k: v for k, v in plain(cfg.optimizer).items() if not k.startswith("_")},
            "lr_scheduler": str(cfg.lr_scheduler._target_),
            "ema_decay": cfg.ema_decay,
            "p_uncond": float(cfg.conditioning.p_uncond),
            "guidance_scale": float(cfg.conditioning.guidance_scale),
            "sampler": plain(cfg.sampler),
            "val_loss_final": metrics.get("val/loss"),
        },
    }


class _Clock:
    """Milestone bookkeeping for the peers' loops: `tick(step, snapshot)` before each step saves
    snapshot() at every point passed and returns False once the budget is spent."""

    def __init__(self, points: list[int], out: Path, save: Callable[[Path], None]) -> None:
        self.points, self.out, self.save = list(points), out, save
        self.saved: list[dict] = []
        self.t0 = time.monotonic()

    def tick(self, step: int) -> bool:
        elapsed = time.monotonic() - self.t0
        while self.points and elapsed >= self.points[0]:
            point = self.points.pop(0)
            path = self.out / f"t{point:05d}.pt"
            self.save(path)
            self.saved.append(
                {"point_s": point, "seconds": elapsed, "step": step, "file": str(path)}
            )
        return bool(self.points)


def _train_images(data_root: Path, train_size: int | None) -> dict:
    """Our datamodule's training split (the 60,000 MNIST training images, uint8)."""
    from diffusion_lab.app.build import build_datamodule

    cfg = our_config([f"data.root={data_root}"], train_size)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    return dm.train_data


def train_diffusers(args, data_root: Path, out: Path, points: list[int]) -> dict:
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from diffusion_lab.data.loader import to_model_range
    from diffusion_lab.host_memory import keep_freed_memory

    keep_freed_memory()  # as our entry point does for itself: the same host-memory setting
    hp = DIFFUSERS_TRAIN
    data = _train_images(data_root, args.train_size)
    images, labels = data["image"], data["label"]
    torch.manual_seed(0)
    unet = diffusers_unet(args.diffusers_width)
    scheduler = DDPMScheduler(
        num_train_timesteps=hp["ddpm_num_steps"],
        beta_schedule=hp["ddpm_beta_schedule"],
        prediction_type=hp["prediction_type"],
    )
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=hp["lr"],
        betas=(hp["adam_beta1"], hp["adam_beta2"]),
        weight_decay=hp["adam_weight_decay"],
        eps=hp["adam_epsilon"],
    )
    bs = hp["train_batch_size"]
    steps_per_epoch = math.ceil(len(images) / bs)  # its DataLoader: shuffle, no drop_last
    lr_scheduler = get_scheduler(
        hp["lr_scheduler"],
        optimizer=optimizer,
        num_warmup_steps=hp["lr_warmup_steps"],
        num_training_steps=steps_per_epoch * hp["num_epochs"],
    )
    ema = EMAModel(
        unet.parameters(),
        decay=hp["ema_max_decay"],
        use_ema_warmup=True,
        inv_gamma=hp["ema_inv_gamma"],
        power=hp["ema_power"],
    )

    def snapshot(path: Path) -> None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
        state = {k: v.detach().clone() for k, v in unet.state_dict().items()}
        ema.restore(unet.parameters())
        torch.save({"width": args.diffusers_width, "state_dict": state}, path)

    g = torch.Generator().manual_seed(0)
    unet.train()
    step = 0
    clock = _Clock(points, out, snapshot)
    running = True
    while running:
        order = torch.randperm(len(images), generator=g)
        for i in range(steps_per_epoch):
            if not clock.tick(step):
                running = False
                break
            idx = order[i * bs : (i + 1) * bs]
            clean = to_model_range(images[idx])
            noise = torch.randn(clean.shape)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),)).long()
            noisy = scheduler.add_noise(clean, noise, t)
            pred = unet(noisy, t, class_labels=labels[idx], return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), hp["max_grad_norm"])
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            ema.step(unet.parameters())
            step += 1
    return {
        "params": n_params(unet),
        "batch_size": bs,
        "precision": "32",
        "milestones": clock.saved,
        "settings": {
            **hp,
            "block_out_channels": list(unet.config.block_out_channels),
            "down_block_types": list(DIFFUSERS_DOWN),
            "norm_num_groups": unet.config.norm_num_groups,
            "num_class_embeds": NUM_CLASSES,
            "final_loss": loss.item() if step else None,
        },
    }


def _write_pngs(images: torch.Tensor, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images[:, 0].numpy()):
        Image.fromarray(img, mode="L").save(folder / f"{i:05d}.png")


def train_lucid(args, data_root: Path, out: Path, points: list[int]) -> dict:
    from denoising_diffusion_pytorch import GaussianDiffusion, Trainer

    from diffusion_lab.host_memory import keep_freed_memory

    keep_freed_memory()
    tmp = Path(tempfile.mkdtemp(prefix="dlab_peers_lucid_"))
    try:
        _write_pngs(_train_images(data_root, args.train_size)["image"], tmp / "images")
        torch.manual_seed(0)
        diffusion = GaussianDiffusion(lucid_unet(args.lucid_dim), image_size=IMAGE_SIZE)
        results = tmp / "results"
        results.mkdir()
        trainer = Trainer(
            diffusion, str(tmp / "images"), results_folder=str(results), **LUCID_TRAINER
        )

        def snapshot(path: Path) -> None:
            state = copy.deepcopy(trainer.ema.ema_model.state_dict())
            torch.save({"dim": args.lucid_dim, "state_dict": state}, path)

        class Spent(Exception):
            pass

        batches = trainer.dl

        def budgeted():  # its loop calls next(self.dl) at the start of every step
            while True:
                if not clock.tick(trainer.step):
                    raise Spent
                yield next(batches)

        clock = _Clock(points, out, snapshot)
        trainer.dl = budgeted()
        try:
            trainer.train()
        except Spent:
            pass
        defaults = {
            "train_batch_size": trainer.batch_size,
            "train_lr": trainer.opt.param_groups[0]["lr"],
            "adam_betas": list(trainer.opt.param_groups[0]["betas"]),
            "ema_decay": trainer.ema.beta,
            "ema_update_every": trainer.ema.update_every,
            "max_grad_norm": trainer.max_grad_norm,
            "timesteps": diffusion.num_timesteps,
            "objective": diffusion.objective,
            "beta_schedule": "sigmoid (GaussianDiffusion's default)",
            "dim_mults": list(LUCID_DIM_MULTS),
            **LUCID_TRAINER,
        }
        return {
            "params": n_params(diffusion.model),
            "batch_size": trainer.batch_size,
            "precision": "32",
            "milestones": clock.saved,
            "settings": defaults,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TRAIN = {"ours": train_ours, "diffusers": train_diffusers, "lucidrains": train_lucid}


def train_child(args) -> None:
    system, out = args.train, Path(args.out) / args.train
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    points = budget_points(args.minutes, args.milestones if args.n_mid > 0 else [])
    before = loadavg()
    t0 = time.perf_counter()
    result = TRAIN[system](args, Path(args.data_root), out, points)
    result.update(
        {"system": system, "child_wall_s": time.perf_counter() - t0, "loadavg_before": before}
    )
    result["loadavg_after"] = loadavg()
    (out / "train.json").write_text(json.dumps(result, indent=2))


# ---- scoring ---------------------------------------------------------------------------------
def sample_ours(path: str, n: int, args) -> tuple[torch.Tensor, str, int]:
    from diffusion_lab.app.build import load_module
    from diffusion_lab.diffusion import make_sampler
    from diffusion_lab.sampling import sampler_options

    module, cfg = load_module(path)
    sampler = sampler_options(module.sampler, {"steps": args.sampling_steps})
    w = float(module.guidance_scale)
    images = module.generate(
        n,
        labels=torch.arange(n) % NUM_CLASSES,
        sampler=sampler,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    nfe = make_sampler(module.diffusion, sampler).nfe * (1 if w in (0.0, 1.0) else 2)
    desc = f"{sampler['name'].upper()}-{sampler['steps']} (ours), CFG w={w:g}"
    return images.cpu(), desc, nfe


@torch.inference_mode()
def sample_diffusers(path: str, n: int, args) -> tuple[torch.Tensor, str, int]:
    from diffusers import DDIMScheduler, DDPMScheduler

    saved = torch.load(path, weights_only=True)
    unet = diffusers_unet(saved["width"])
    unet.load_state_dict(saved["state_dict"])
    unet.eval()
    hp = DIFFUSERS_TRAIN
    train_sched = DDPMScheduler(
        num_train_timesteps=hp["ddpm_num_steps"],
        beta_schedule=hp["ddpm_beta_schedule"],
        prediction_type=hp["prediction_type"],
    )
    sched = DDIMScheduler.from_config(train_sched.config)  # DDIMPipeline's loop, with labels
    sched.set_timesteps(args.sampling_steps)
    g = torch.Generator().manual_seed(args.seed)
    labels = torch.arange(n) % NUM_CLASSES
    out = []
    for start in range(0, n, args.batch_size):
        y = labels[start : start + args.batch_size]
        x = torch.randn((len(y), 1, IMAGE_SIZE, IMAGE_SIZE), generator=g)
        for t in sched.timesteps:
            eps = unet(x, t, class_labels=y, return_dict=False)[0]
            x = sched.step(eps, t, x, eta=0.0, generator=g).prev_sample
        out.append(x.clamp(-1, 1))
    desc = f"DDIMScheduler-{args.sampling_steps} (diffusers), no guidance"
    return torch.cat(out), desc, len(sched.timesteps)


@torch.inference_mode()
def sample_lucid(path: str, n: int, args) -> tuple[torch.Tensor, str, int]:
    from denoising_diffusion_pytorch import GaussianDiffusion

    saved = torch.load(path, weights_only=True)
    diffusion = GaussianDiffusion(
        lucid_unet(saved["dim"]), image_size=IMAGE_SIZE, sampling_timesteps=args.sampling_steps
    )
    diffusion.load_state_dict(saved["state_dict"])
    diffusion.eval()
    torch.manual_seed(args.seed)  # its samplers draw from the global generator
    out = []
    for start in range(0, n, args.batch_size):
        m = min(args.batch_size, n - start)
        out.append(diffusion.sample(batch_size=m) * 2 - 1)  # it returns [0, 1]
    kind = "DDIM" if diffusion.is_ddim_sampling else "DDPM"
    desc = f"{kind}-{diffusion.sampling_timesteps} (its own), unconditional"
    return torch.cat(out).clamp(-1, 1), desc, int(diffusion.sampling_timesteps)


SAMPLE = {"ours": sample_ours, "diffusers": sample_diffusers, "lucidrains": sample_lucid}
CONDITIONAL = {"ours": True, "diffusers": True, "lucidrains": False}


def build_judge(args, data_root: Path, out: Path):
    from diffusion_lab.app.build import build_datamodule
    from diffusion_lab.data.loader import to_model_range
    from diffusion_lab.metrics.classifier import feature_classifier
    from diffusion_lab.metrics.fid import DatasetFeatures, FeatureDistance

    cfg = our_config([f"data.root={data_root}"], args.train_size)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    settings = {
        "train_size": args.classifier_train,
        "epochs": args.classifier_epochs,
        "batch_size": 128,
        "lr": 1e-3,
        "seed": 0,
    }
    judge, info = feature_classifier(out, dm, settings, torch.device("cpu"), "mnist-peers")
    real = to_model_range(dm.val_data["image"])
    dist = FeatureDistance(
        DatasetFeatures(judge), kid_subsets=50, kid_subset_size=min(1000, args.n, len(real))
    )
    dist.add_real(real)
    info = {**info, **settings, "n_real": len(real), "real_vs_real": dist.real_vs_real()}
    return judge, dist, info


def score(args, data_root: Path, out: Path, trained: dict) -> dict:
    from diffusion_lab.metrics.classifier import accuracy

    judge, dist, info = build_judge(args, data_root, out)
    say(f"judge: val accuracy {info['val_accuracy']:.4f}; real vs real {info['real_vs_real']}")
    rows = []
    for system, res in trained.items():
        last = len(res["milestones"]) - 1
        for i, m in enumerate(res["milestones"]):
            n = args.n if i == last else args.n_mid
            if n < 2:
                continue
            t0 = time.perf_counter()
            images, desc, nfe = SAMPLE[system](m["file"], n, args)
            seconds = time.perf_counter() - t0
            labels = torch.arange(n) % NUM_CLASSES
            row = {
                "system": system,
                "params": res["params"],
                "minutes": m["seconds"] / 60,
                "step": m["step"],
                "images_per_s": m["step"] * res["batch_size"] / max(m["seconds"], 1e-9),
                "final": i == last,
                "n": n,
                "sampler": desc,
                "nfe": nfe,
                **dist.score(images),
                "accuracy": accuracy(judge, images, labels) if CONDITIONAL[system] else None,
                "sample_seconds": seconds,
            }
            rows.append(row)
            say(
                f"{system} at {row['minutes']:.2f} min ({row['step']} steps): FID {row['fid']:.2f}, "
                f"accuracy {row['accuracy'] if row['accuracy'] is not None else 'n/a'}, "
                f"{seconds:.0f} s to sample {n}"
            )
            _save_grid(images[:100], out / f"samples_{system}_t{m['point_s']:05d}.png")
    return {"judge": info, "rows": rows}


def _save_grid(images: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    save_image((images + 1) / 2, path, nrow=10, padding=1, pad_value=1.0)


# ---- the report ------------------------------------------------------------------------------
LABELS = {
    "ours": f"ours ({EXPERIMENT})",
    "diffusers": "diffusers UNet2DModel + train_unconditional.py loop",
    "lucidrains": "denoising-diffusion-pytorch Unet + Trainer",
}


def table(report: dict) -> str:
    lines = [
        "| system | params | steps | minutes | train images/s | sampler (network calls / image) "
        "| FID (judge features) | requested digit recognised |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in report["rows"]:
        if not r["final"]:
            continue
        acc = f"{100 * r['accuracy']:.1f}%" if r["accuracy"] is not None else "n/a (unconditional)"
        lines.append(
            f"| {LABELS[r['system']]} | {r['params']:,} | {r['step']:,} | {r['minutes']:.2f} | "
            f"{r['images_per_s']:.1f} | {r['sampler']} ({r['nfe']}) | {r['fid']:.2f} | {acc} |"
        )
    judge = report["judge"]
    half = judge["real_vs_real"].get("n_per_half", judge["n_real"] // 2)
    lines.append(
        f"\n{report['args']['n']} samples per system at the end "
        f"(FID against {judge['n_real']} validation images; real vs real, {half:,} vs {half:,}: "
        f"{judge['real_vs_real']['fid']:.2f}); judge: the project's MNIST classifier, "
        f"{100 * judge['val_accuracy']:.1f}% on the validation images. "
        f"Machine: {report['machine']['cpu']}, {report['machine']['cpu_count']} cores, "
        f"torch {report['machine']['torch']}, precision "
        + ", ".join(f"{s} {t['precision']}" for s, t in report["trained"].items())
        + "."
    )
    mids = [r for r in report["rows"] if not r["final"]]
    if mids:
        lines += ["", "| system | minutes | steps | n | FID | requested digit recognised |"]
        lines.append("|---|---:|---:|---:|---:|---:|")
        for r in sorted(report["rows"], key=lambda r: (SYSTEMS.index(r["system"]), r["minutes"])):
            acc = f"{100 * r['accuracy']:.1f}%" if r["accuracy"] is not None else "n/a"
            lines.append(
                f"| {r['system']} | {r['minutes']:.2f} | {r['step']:,} | {r['n']} | "
                f"{r['fid']:.2f} | {acc} |"
            )
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in SYSTEMS:
        rows = sorted(
            (r for r in report["rows"] if r["system"] == system), key=lambda r: r["minutes"]
        )
        if not rows:
            continue
        label = f"{LABELS[system]}, {rows[0]['params'] / 1e6:.2f}M params"
        xs = [r["minutes"] for r in rows]
        (line,) = ax_fid.plot(xs, [r["fid"] for r in rows], marker="o", label=label)
        if CONDITIONAL[system]:
            accs = [100 * r["accuracy"] for r in rows]
            ax_acc.plot(xs, accs, marker="o", color=line.get_color(), label=label)
    floor = report["judge"]["real_vs_real"]["fid"]
    ax_fid.axhline(floor, color="k", ls="--", lw=1, label=f"real vs real ({floor:.2f})")
    ax_fid.set_yscale("log")
    ax_fid.set_xlabel("training wall-clock minutes")
    ax_fid.set_ylabel("FID in the judge's features (lower is better)")
    ax_fid.set_title("FID vs training minutes")
    ax_fid.legend(fontsize=7)
    ax_acc.set_xlabel("training wall-clock minutes")
    ax_acc.set_ylabel("requested digit recognised (%)")
    ax_acc.set_title("class accuracy (conditional systems)")
    ax_acc.axhline(100 / NUM_CLASSES, color="k", ls=":", lw=1, label="chance (10%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.legend(fontsize=7)
    right = 1.05 * max((r["minutes"] for r in report["rows"]), default=1.0)
    for ax in (ax_fid, ax_acc):
        ax.set_xlim(0, right)
        ax.grid(alpha=0.3)
    m = report["machine"]
    fig.suptitle(f"MNIST, same wall-clock budget, one after another: {m['cpu']}, "
                 f"{m['cpu_count']} cores, torch {m['torch']}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main ------------------------------------------------------------------------------------
INTERNAL_ARGS = ("train", "data_root", "diffusers_width", "lucid_dim")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per system")
    p.add_argument("--milestones", default="2.5,5", help="also score at these minutes")
    p.add_argument("--n", type=int, default=1000, help="samples per system at the end")
    p.add_argument("--n-mid", type=int, default=300, help="at the milestones (0: none)")
    p.add_argument("--sampling-steps", type=int, default=50, help="sampler steps, every system")
    p.add_argument("--batch-size", type=int, default=250, help="sampling batch")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "auto"],
                   help="ours (auto: its CPU default, bf16-mixed on AMX); the peers train fp32")  # fmt: skip
    p.add_argument("--train-size", type=int, default=None,
                   help="train every system on the first N training images (default: all)")  # fmt: skip
    p.add_argument("--classifier-train", type=int, default=20000)
    p.add_argument("--classifier-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "outputs" / "benchmark_peers"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "img" / "peers_fid_vs_minutes.png"))
    p.add_argument("--score-only", action="store_true", help="score the checkpoints in --out")
    p.add_argument("--quick", action="store_true",
                   help="tiny: 0.3 min each, 64 samples, 5 steps, plot into --out")  # fmt: skip
    # internal: one training in this process
    p.add_argument("--train", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--data-root", help=argparse.SUPPRESS)
    p.add_argument("--diffusers-width", type=int, help=argparse.SUPPRESS)
    p.add_argument("--lucid-dim", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.minutes, args.n, args.n_mid, args.sampling_steps = 0.3, 64, 0, 5
        args.classifier_train, args.classifier_epochs, args.train_size = 5000, 1, 5000
        args.plot = str(Path(args.out) / "peers_fid_vs_minutes.png")
    args.milestones = [float(v) for v in str(args.milestones).split(",") if v]
    args.systems = [s for s in args.systems.split(",") if s]
    for s in args.systems:
        if s not in SYSTEMS:
            p.error(f"--systems: {s!r} is not one of {', '.join(SYSTEMS)}")
    return args


def run_training(args, system: str, data_root: Path, out: Path, widths: dict) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--train",
        system,
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--minutes",
        str(args.minutes),
        "--milestones",
        ",".join(str(m) for m in args.milestones),
        "--n-mid",
        str(args.n_mid),
        "--precision",
        args.precision,
        *(["--train-size", str(args.train_size)] if args.train_size else []),
        *(["--quick"] if args.quick else []),
        "--diffusers-width",
        str(widths["diffusers"]),
        "--lucid-dim",
        str(widths["lucidrains"]),
    ]
    log = out / f"train_{system}.log"
    say(f"training {system} for {args.minutes:g} min (log: {log})")
    with open(log, "w") as f:
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        sys.exit(f"training {system} failed (exit {res.returncode}); see {log}:\n"
                 + "\n".join(log.read_text().splitlines()[-30:]))  # fmt: skip
    result = json.loads((out / system / "train.json").read_text())
    last = result["milestones"][-1]
    say(f"{system}: {last['step']} steps in {last['seconds']:.0f} s")
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.train:
        return train_child(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    target = our_params()
    widths, params = {}, {"ours": target}
    for system in ("diffusers", "lucidrains"):
        widths[system], params[system] = peer_width(system, target)
    say(f"parameters: ours {target:,}; diffusers block_out_channels "
          f"({widths['diffusers']}, {2 * widths['diffusers']}, {2 * widths['diffusers']}) "
          f"{params['diffusers']:,} ({100 * rel_diff(params['diffusers'], target):+.1f}%); "
          f"lucidrains Unet dim={widths['lucidrains']} {params['lucidrains']:,} "
          f"({100 * rel_diff(params['lucidrains'], target):+.1f}%)")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="dlab_peers_"))
    try:
        shutil.copytree(SHARED / "MNIST", tmp / "MNIST")  # torchvision unpacks in place
        trained = {}
        for system in args.systems:
            if args.score_only:
                trained[system] = json.loads((out / system / "train.json").read_text())
            else:
                trained[system] = run_training(args, system, tmp, out, widths)
        report = {
            "machine": machine(),
            "args": {k: v for k, v in vars(args).items() if k not in INTERNAL_ARGS},
            "parameter_match": {"target": target, "widths": widths, "params": params},
            "trained": trained,
        }
        report.update(score(args, tmp, out, trained))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (out / "peers.json").write_text(json.dumps(report, indent=2))
    plot(report, Path(args.plot))
    print()
    print(table(report))
    print(f"\nwrote {out / 'peers.json'} and {args.plot}")


if __name__ == "__main__":
    main()
