"""The training step's hot path reads nothing back from the device, and what the GPU paths rely
on (float32 sums, forked generators, synchronised clocks, deterministic kernels) holds.

A tensor on the `meta` device has a shape but no values: reading one back (`.item()`, `bool()`,
a boolean mask) raises, so code that runs on meta tensors never waits for a GPU."""

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from diffusion_lab import hardware
from diffusion_lab.data.loader import TensorBatches
from diffusion_lab.metrics.classifier import AdaptiveAvgPool2d, SmallClassifier, train_classifier
from diffusion_lab.models.attn_unet import NearestUpsample2x
from diffusion_lab.training.measure import forward_mflops
from diffusion_lab.training.module import EMA, BucketMeans

from .conftest import compose_cfg


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))  # a float and an int buffer


def test_ema_update_reads_nothing_back_from_the_device():
    with pytest.raises((NotImplementedError, RuntimeError)):  # torch's own update does
        AveragedModel(small_net(), use_buffers=True).to("meta").update_parameters(
            small_net().to("meta")
        )
    ema = EMA(small_net(), 0.9).to("meta")
    for _ in range(3):
        ema.update_parameters(small_net().to("meta"))


def test_ema_follows_the_warmup_decay_and_resumes_its_count_from_a_checkpoint():
    net = small_net()
    ema = EMA(net, 0.9)
    expected = [p.detach().clone() for p in net.parameters()]
    for n in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        ema.update_parameters(net)
        d = min(0.9, (1 + n) / (10 + n))
        for e, p in zip(expected, net.parameters()):
            e.copy_(p) if n == 0 else e.lerp_(p.detach(), 1 - d)
    assert all(torch.allclose(e, p) for e, p in zip(expected, ema.module.parameters()))
    assert ema.module[1].num_batches_tracked == net[1].num_batches_tracked
    resumed = EMA(small_net(), 0.9)
    resumed.load_state_dict(ema.state_dict())
    for model in (ema, resumed):
        model.update_parameters(net)  # n = 4 for both: the count came with the checkpoint
    assert int(resumed.n_averaged) == 5
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), resumed.parameters()))


def test_batches_are_cut_and_flipped_without_reading_the_device():
    images = torch.arange(10 * 4, dtype=torch.uint8).reshape(10, 1, 2, 2)
    labels = torch.arange(10)
    meta = TensorBatches(
        {"image": images, "label": labels}, 4, shuffle=True, hflip=True, device="meta"
    )
    assert [b["image"].shape[0] for b in meta] == [4, 4, 2]
    cpu = TensorBatches({"image": images, "label": labels}, 4, shuffle=True, hflip=True, seed=3)
    flipped = 0
    for batch in cpu:
        original = images[batch["label"]].float() / 127.5 - 1
        same = (batch["image"] == original).flatten(1).all(1)
        mirrored = (batch["image"] == original.flip(-1)).flatten(1).all(1)
        assert (same | mirrored).all()  # each image as it was or mirrored left to right
        flipped += int((mirrored & ~same).sum())
    assert 0 < flipped < 10


def test_bucket_sums_stay_float32_under_autocast():
    losses = torch.full((8,), 1.0 + 2**-12)  # bf16 keeps 8 bits: this rounds to 1.0
    t = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    metric = BucketMeans([0, 4, 8])
    one_hot = torch.ones(8, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (losses @ one_hot).dtype == torch.bfloat16  # a matmul would lose the digits
        metric.update(losses, t)
    assert metric.sums.dtype == torch.float32
    assert torch.equal(metric.compute(), torch.full((2,), 1.0 + 2**-12))


def test_fork_rng_covers_the_gpu_generator_too(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.random, "fork_rng", lambda **kw: seen.append(kw) or torch.no_grad())
    hardware.fork_rng("cuda:1")
    hardware.fork_rng(torch.device("cpu"))
    assert seen == [{"devices": [1], "device_type": "cuda"}, {"devices": []}]


def test_the_judge_classifier_leaves_the_callers_rng_alone():
    images = torch.rand(8, 1, 8, 8) * 2 - 1
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_classifier(images, torch.arange(8) % 2, 2, epochs=1)
    assert torch.equal(torch.rand(3), expected)


def test_clock_reads_wait_for_the_gpu(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    hardware.synchronized_clock("cuda:0")
    hardware.synchronized_clock("cpu")
    assert synced == [torch.device("cuda:0")]


@pytest.mark.parametrize("size", [7, 8, 14, 16, 28])
def test_deterministic_adaptive_pool_matches_torchs(size):
    x = torch.randn(2, 3, size, size)
    assert torch.allclose(AdaptiveAvgPool2d(4)(x), nn.AdaptiveAvgPool2d(4)(x), atol=1e-6)


def test_deterministic_upsample_matches_torchs():
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(NearestUpsample2x()(x), nn.Upsample(scale_factor=2, mode="nearest")(x))


# layers whose CUDA backward raises under torch.use_deterministic_algorithms(True)
NONDETERMINISTIC_ON_CUDA = (
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d, nn.AvgPool3d,
    nn.MaxPool3d, nn.FractionalMaxPool2d, nn.Upsample, nn.ReflectionPad2d, nn.ReplicationPad2d,
)  # fmt: skip


@pytest.mark.parametrize("model", ["basic_unet", "efficient_unet", "attn_unet", "gelu_unet",
                                   "light_unet", "classifier"])  # fmt: skip
def test_nets_have_no_layer_without_a_deterministic_cuda_backward(model, tmp_path):
    if model == "classifier":
        net = SmallClassifier(3, 16, 10)
    else:
        from diffusion_lab.app.build import build_net

        net = build_net(compose_cfg(tmp_path, [f"model={model}"], tiny=True))
    bad = [type(m).__name__ for m in net.modules() if isinstance(m, NONDETERMINISTIC_ON_CUDA)]
    assert not bad


def test_flops_are_counted_on_the_uncompiled_forward(tmp_path):
    from diffusion_lab.app.build import build_net

    net = build_net(compose_cfg(tmp_path, [], tiny=True))
    plain = forward_mflops(net)

    def compiled_call(*args, **kwargs):
        raise AssertionError("the compiled call ran")

    net._compiled_call_impl = compiled_call  # what net.compile() installs
    assert plain and forward_mflops(net) == plain
