import pytest
import torch

from diffusion_lab.errors import UserError
from diffusion_lab.models import Cond, CourseUNet

BASIC = dict(channels=(64, 128, 256), time_dim=64, middle_conv=False)
EFFICIENT = dict(channels=(24, 48, 96), time_dim=192, middle_conv=True)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "arch, channels, expected",
    [
        (BASIC, 1, 3_712_257),
        (BASIC, 3, 3_713_539),
        (EFFICIENT, 1, 679_081),
        (EFFICIENT, 3, 679_563),
    ],
)
def test_course_unet_parameter_counts(arch, channels, expected):
    assert n_params(CourseUNet(channels, 28, **arch)) == expected


@pytest.mark.parametrize("arch", [BASIC, EFFICIENT])
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_course_unet_output_shape(arch, channels, size):
    net = CourseUNet(channels, size, **arch)
    x = torch.randn(2, channels, size, size)
    assert net(x, torch.tensor([0, 999])).shape == x.shape


def test_image_size_the_depth_cannot_halve_is_an_error_at_construction():
    with pytest.raises(UserError, match="data.image_size=30 cannot be halved 2 times"):
        CourseUNet(1, 30, **BASIC)


def test_conditioning_fields_the_model_was_not_built_for_are_errors():
    net = CourseUNet(1, 8, channels=(8, 16), time_dim=16)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with pytest.raises(UserError, match="without class conditioning"):
        net(x, t, Cond(labels=torch.tensor([0, 1])))
    cond_net = CourseUNet(1, 8, channels=(8, 16), time_dim=16, num_classes=3)
    a = cond_net(x, t, Cond(labels=torch.tensor([0, 0])))
    b = cond_net(x, t, Cond(labels=torch.tensor([1, 1])))
    assert not torch.allclose(a, b)  # the label changes the output
