import pytest
import torch

from diffusion_lab.errors import UserError
from diffusion_lab.models import Cond, SimpleUNet

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
def test_simple_unet_parameter_counts(arch, channels, expected):
    assert n_params(SimpleUNet(channels, 28, **arch)) == expected


@pytest.mark.parametrize("arch", [BASIC, EFFICIENT])
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_simple_unet_output_shape(arch, channels, size):
    net = SimpleUNet(channels, size, **arch)
    x = torch.randn(2, channels, size, size)
    assert net(x, torch.tensor([0, 999])).shape == x.shape


def test_image_size_the_depth_cannot_halve_is_an_error_at_construction():
    with pytest.raises(UserError, match="data.image_size=30 cannot be halved 2 times"):
        SimpleUNet(1, 30, **BASIC)


def test_conditioning_fields_the_model_was_not_built_for_are_errors():
    net = SimpleUNet(1, 8, channels=(8, 16), time_dim=16)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with pytest.raises(UserError, match="without class conditioning"):
        net(x, t, Cond(labels=torch.tensor([0, 1])))
    cond_net = SimpleUNet(1, 8, channels=(8, 16), time_dim=16, num_classes=3)
    a = cond_net(x, t, Cond(labels=torch.tensor([0, 0])))
    b = cond_net(x, t, Cond(labels=torch.tensor([1, 1])))
    assert not torch.allclose(a, b)  # the label changes the output


def test_attention_position_embedding_relates_offsets_and_keeps_checkpoints_compatible():
    from diffusion_lab.models import AttnUNet
    from diffusion_lab.models.attn_unet import position_embedding

    pe = position_embedding(32, 8).reshape(8, 8, 32)
    assert pe.shape == (8, 8, 32) and torch.isfinite(pe).all()
    # a dot product of two embeddings depends only on their offset: attention can look
    # "one period away" from any position
    same_offset = [pe[y, x] @ pe[y, x + 3] for y in range(8) for x in range(5)]
    assert torch.allclose(torch.stack(same_offset), same_offset[0], atol=1e-4)
    assert not torch.allclose(pe[0, 0] @ pe[0, 3], pe[0, 0] @ pe[0, 4])

    kw = dict(in_channels=3, image_size=16, base=8, mults=(1, 2), attn_resolutions=(16, 8),
              heads=2, groups=4)  # fmt: skip
    plain, positioned = AttnUNet(**kw), AttnUNet(**kw, position_embedding=True)
    assert plain.state_dict().keys() == positioned.state_dict().keys()
    positioned.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 500])
    assert not torch.allclose(plain(x, t), positioned(x, t))  # same weights, positions matter
