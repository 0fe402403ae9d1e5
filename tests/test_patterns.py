import torch

from diffusion_lab.data.patterns import BLUE, FAMILIES, RED, generate_patterns


def test_all_families_only_two_colours_and_deterministic():
    images, labels, scale = generate_patterns(400, 32, seed=3)
    assert images.shape == (400, 3, 32, 32) and images.dtype == torch.uint8
    assert set(labels.tolist()) == set(range(len(FAMILIES))) and len(FAMILIES) == 8
    colours = {tuple(c) for c in images.permute(0, 2, 3, 1).reshape(-1, 3).tolist()}
    assert colours == {RED, BLUE}
    assert set(scale.tolist()) == {0, 1}
    # every image uses both colours (a pattern, not a flat fill) for the periodic families
    periodic = labels < 6
    both = (images[:, 0] == 255).flatten(1).any(1) & (images[:, 2] == 255).flatten(1).any(1)
    assert both[periodic].all()
    again, labels2, _ = generate_patterns(400, 32, seed=3)
    assert torch.equal(images, again) and torch.equal(labels, labels2)
    other, _, _ = generate_patterns(400, 32, seed=4)
    assert not torch.equal(images, other)


def test_small_sizes_work():
    images, _, _ = generate_patterns(64, 16, seed=0)
    assert images.shape == (64, 3, 16, 16)
