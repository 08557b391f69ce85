"""Tests of ddpmlab.nn: the sinusoidal embedding, the class embedding and the UNet."""

from __future__ import annotations

import math

import pytest
import torch

from ddpmlab.config import ModelConfig
from ddpmlab.errors import ConfigError
from ddpmlab.nn import UNet, count_parameters, timestep_embedding
from ddpmlab.nn.embedding import ClassEmbedding, TimeEmbedding


def tiny(**kw) -> ModelConfig:
    """A few-thousand-parameter UNet: 3 levels, attention at the deepest."""
    base = dict(
        in_channels=1, image_size=28, base_channels=8, channel_mult=(1, 2, 2),
        num_res_blocks=1, attention_resolutions=(7,), num_heads=2, norm_groups=4,
    )
    base.update(kw)
    return ModelConfig(**base)


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Give every parameter (the zero-initialised ones included) a random nudge."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def ts(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- sinusoid
@pytest.mark.parametrize("dim", [1, 2, 3, 8, 9, 64])
def test_timestep_embedding_matches_hand_computation(dim):
    t = [0, 1, 17, 500, 999]
    got = timestep_embedding(torch.tensor(t), dim)
    assert got.shape == (len(t), dim) and got.dtype == torch.float32
    half = dim // 2
    for row, tv in enumerate(t):
        # sin first, then cos; freq_i = exp(-ln(10000) * i / (half - 1)), zero pad if dim odd
        freqs = [math.exp(-math.log(10000.0) * i / max(half - 1, 1)) for i in range(half)]
        want = [math.sin(tv * f) for f in freqs] + [math.cos(tv * f) for f in freqs]
        want += [0.0] * (dim % 2)
        want = torch.tensor(want, dtype=torch.float64)
        torch.testing.assert_close(got[row].double(), want, atol=1e-6, rtol=0)


def test_timestep_embedding_order_and_endpoints():
    e = timestep_embedding(torch.tensor([0, 3]), 6)
    # t = 0: sin half is 0, cos half is 1
    assert e[0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    # first frequency is 1, last is 1/max_period
    assert e[1, 0].item() == pytest.approx(math.sin(3.0), abs=1e-7)
    assert e[1, 2].item() == pytest.approx(math.sin(3e-4), abs=1e-9)
    assert e[1, 3].item() == pytest.approx(math.cos(3.0), abs=1e-7)
    # float t is accepted and equals the int64 one
    assert torch.equal(timestep_embedding(torch.tensor([3.0]), 6), e[1:])


def test_timestep_embedding_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\[N\]"):
        timestep_embedding(torch.zeros(2, 1), 8)


def test_time_embedding_width():
    assert TimeEmbedding(16)(torch.tensor([0, 5])).shape == (2, 64)


def test_class_embedding_null_row_and_range():
    emb = ClassEmbedding(10, 4)
    assert emb.null_index == 10 and emb.embedding.num_embeddings == 11
    assert emb(torch.tensor([0, 10])).shape == (2, 4)
    for bad in (11, -1):
        with pytest.raises(ValueError, match="out of range"):
            emb(torch.tensor([0, bad]))
    with pytest.raises(ValueError, match="integers"):
        emb(torch.tensor([0.0]))


# --------------------------------------------------------------------------- UNet shapes
@pytest.mark.parametrize(
    "channels,size,classes",
    [(1, 28, 0), (3, 28, 0), (1, 32, 10), (3, 32, 10), (1, 30, 0), (3, 8, 10)],
)
def test_unet_output_shape(channels, size, classes):
    attn = (math.ceil(size / 4),)
    net = perturb(UNet(tiny(in_channels=channels, image_size=size, num_classes=classes,
                            attention_resolutions=attn)))
    x = torch.randn(3, channels, size, size)
    y = torch.tensor([0, 1, classes]) if classes else None
    out = net(x, ts(3), y)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unet_non_square_and_other_size_than_config():
    net = perturb(UNet(tiny()))
    for h, w in [(28, 20), (13, 9), (1, 1)]:
        x = torch.randn(2, 1, h, w)
        assert net(x, ts(2)).shape == (2, 1, h, w)


def test_padding_is_cropped_not_leaked():
    """A 30x30 input runs padded to 32x32 with zeros: equals padding by hand and cropping."""
    net = perturb(UNet(tiny(image_size=30, attention_resolutions=(8,)))).eval()
    x, t = torch.randn(2, 1, 30, 30), ts(2)
    by_hand = net(torch.nn.functional.pad(x, (0, 2, 0, 2)), t)[:, :, :30, :30]
    torch.testing.assert_close(net(x, t), by_hand)


def test_attention_placement_follows_unpadded_level_sizes():
    net = UNet(tiny(image_size=28, attention_resolutions=(14,)))
    assert net.level_sizes == (28, 14, 7)
    with_attn = [i for i, s in enumerate(net.down) if getattr(s, "attn", None) is not None]
    assert with_attn == [2]  # down = [res28, down, res14, down, res7]
    assert UNet(tiny(image_size=30, attention_resolutions=(8,))).level_sizes == (30, 15, 8)
    with pytest.raises(ConfigError, match=r"level sizes are \[28, 14, 7\]"):
        UNet(tiny(attention_resolutions=(16,)))
    with pytest.raises(ConfigError, match="num_heads"):
        UNet(tiny(num_heads=3))


def test_bad_inputs_name_expected_and_got_shapes():
    net = UNet(tiny())
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\], got \[2, 3, 28, 28\]"):
        net(torch.randn(2, 3, 28, 28), ts(2))
    with pytest.raises(ValueError, match=r"got \[1, 28, 28\]"):
        net(torch.randn(1, 28, 28), ts(1))
    with pytest.raises(ValueError, match=r"t must have shape \[N\] = \[2\], got \[2, 1\]"):
        net(torch.randn(2, 1, 28, 28), ts(2)[:, None])
    with pytest.raises(ValueError, match=r"got \[3\]"):
        net(torch.randn(2, 1, 28, 28), ts(3))


# --------------------------------------------------------------------------- conditioning
def test_y_none_equals_null_class():
    net = perturb(UNet(tiny(num_classes=10))).eval()
    x, t = torch.randn(2, 1, 28, 28), ts(2)
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((2,), 10)), rtol=0, atol=0)


def test_y_for_unconditional_net_raises():
    with pytest.raises(ValueError, match="unconditional"):
        UNet(tiny())(torch.randn(2, 1, 28, 28), ts(2), torch.tensor([0, 1]))


def test_y_out_of_range_or_wrong_shape_raises():
    net = UNet(tiny(num_classes=10))
    x, t = torch.randn(2, 1, 28, 28), ts(2)
    with pytest.raises(ValueError, match="out of range"):
        net(x, t, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match=r"y must have shape \[N\] = \[2\]"):
        net(x, t, torch.tensor([0]))


def test_classes_change_the_output():
    net = perturb(UNet(tiny(num_classes=3))).eval()
    x, t = torch.randn(1, 1, 28, 28).expand(4, -1, -1, -1), torch.full((4,), 10)
    out = net(x, t, torch.tensor([0, 1, 2, 3]))
    for i in range(4):
        for j in range(i):
            assert (out[i] - out[j]).abs().max() > 1e-3


# --------------------------------------------------------------------------- init, size
def test_fresh_net_is_exactly_zero():
    net = UNet(tiny(num_classes=3))
    out = net(torch.randn(2, 1, 28, 28), ts(2), torch.tensor([0, 3]))
    assert torch.count_nonzero(out) == 0


def test_ddpm_cifar10_parameter_count():
    cfg = ModelConfig(
        in_channels=3, image_size=32, base_channels=128, channel_mult=(1, 2, 2, 2),
        num_res_blocks=2, attention_resolutions=(16,), dropout=0.1, num_heads=1,
    )
    with torch.device("meta"):
        n = count_parameters(UNet(cfg))
    assert abs(n - 35.7e6) / 35.7e6 < 0.01, n  # Ho et al. 2020, Table/Appendix B: 35.7M


def test_groupnorm_groups_are_largest_divisor():
    from ddpmlab.nn.unet import norm_groups

    assert [norm_groups(c, 32) for c in (8, 24, 64, 96, 100)] == [8, 24, 32, 32, 25]


# --------------------------------------------------------------------------- layout, grads
def test_channels_last_matches_contiguous():
    net = perturb(UNet(tiny(num_classes=2, base_channels=16, norm_groups=8))).eval()
    x, t, y = torch.randn(2, 1, 28, 28), ts(2), torch.tensor([0, 1])
    ref = net(x, t, y)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.contiguous(memory_format=torch.channels_last), t, y)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_gradient_reaches_every_parameter():
    net = perturb(UNet(tiny(num_classes=2, image_size=30, attention_resolutions=(15, 8))))
    out = net(torch.randn(2, 1, 30, 30), ts(2), torch.tensor([1, 2]))
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing
