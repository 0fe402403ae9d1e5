"""Inpainting masks: shape, dtype, known/unknown share, reproducibility, mixing, mask images."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lab.data.masks import MASK_KINDS, MaskSpec, make_masks, masks_of_kind
from diffusion_lab.errors import UserError

# expected share of pixels to fill (mask == 0) at 16 px: (low, high)
UNKNOWN_SHARE = {
    "center_box": (0.25, 0.25),  # an 8x8 box in 16x16
    "random_boxes": (0.03, 0.5),
    "vertical_stripe": (3 / 16, 6 / 16),
    "horizontal_stripe": (3 / 16, 6 / 16),
    "scattered": (0.15, 0.45),
    "half": (0.5, 0.5),
}


@pytest.mark.parametrize("kind", sorted(UNKNOWN_SHARE))
def test_every_kind_has_shape_dtype_share_and_is_reproducible(kind):
    m = masks_of_kind(kind, 12, 16, seed=3)
    assert m.shape == (12, 1, 16, 16) and m.dtype == torch.uint8
    assert set(m.unique().tolist()) <= {0, 1}
    lo, hi = UNKNOWN_SHARE[kind]
    share = 1 - m.float().flatten(1).mean(1)
    assert (share >= lo - 1e-6).all() and (share <= hi + 1e-6).all(), share
    assert torch.equal(m, masks_of_kind(kind, 12, 16, seed=3))
    if kind != "center_box":  # the centre box is the same box by design
        assert not torch.equal(m, masks_of_kind(kind, 12, 16, seed=4))
        assert len({tuple(x.flatten().tolist()) for x in m}) > 1


def test_scattered_share_matches_the_fraction_on_average():
    m = masks_of_kind("scattered", 64, 16, seed=0, scatter_fraction=0.3)
    assert abs((1 - m.float().mean()).item() - 0.3) < 0.02


def test_half_covers_all_four_sides():
    m = masks_of_kind("half", 64, 8, seed=0)
    distinct = {tuple(x.flatten().tolist()) for x in m}
    left = torch.ones(8, 8, dtype=torch.uint8)
    left[:, :4] = 0
    halves = {tuple(h.flatten().tolist()) for h in (left, left.flip(1), left.T, left.T.flip(0))}
    assert distinct == halves


def test_a_sample_mask_depends_on_seed_and_index_only():
    spec = MaskSpec(kinds=("random_boxes", "scattered", "half"), seed=5)
    whole, kinds = make_masks(spec, 20, 16)
    part, part_kinds = make_masks(spec, 5, 16, start=10)
    assert torch.equal(whole[10:15], part) and torch.equal(kinds[10:15], part_kinds)
    assert set(kinds.tolist()) == {0, 1, 2}  # the mixture draws every kind
    other, _ = make_masks(spec, 20, 16, seed_offset=1)  # the val split's stream
    assert not torch.equal(whole, other)


def test_user_mask_image_white_known_black_fill(tmp_path):
    a = np.full((32, 32), 255, dtype=np.uint8)
    a[:, :16] = 0  # left half black = to fill
    Image.fromarray(a).save(tmp_path / "m.png")
    m = masks_of_kind("image", 3, 16, image=str(tmp_path / "m.png"))
    assert m.shape == (3, 1, 16, 16)
    assert (m[:, :, :, :8] == 0).all() and (m[:, :, :, 8:] == 1).all()


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"kinds": ("circle",)}, "'circle' is not one of"),
        ({"kinds": ("image",)}, "set masks.image"),
        ({"kinds": ("image",), "image": "nope.png"}, "no such file"),
        ({"box_fraction": 1.5}, "box_fraction"),
    ],
)
def test_bad_mask_config_is_a_one_line_error(kw, message):
    with pytest.raises(UserError, match=message):
        MaskSpec(**kw)


def test_every_kind_is_documented_and_known():
    assert set(UNKNOWN_SHARE) | {"image"} == set(MASK_KINDS)
