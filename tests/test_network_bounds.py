"""The network-bound engine (stabkit.lipschitz.layer_bounds) against exact Jacobian norms of linear nets (D2, D3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stabkit.layers import LinearNormalized, MaxMin, Residual, SRLinear
from stabkit.lipschitz import layer_bounds
from stabkit.losses import layer_spectral_bounds, lipschitz_penalty

D = torch.float64


def exact(net: nn.Module, shape: tuple[int, ...]) -> float:
    """‖J‖₂ of a linear (or, at 0, piecewise-linear) net on one input of ``shape``, from the explicit Jacobian."""
    n = 1
    for s in shape:
        n *= s
    J = torch.autograd.functional.jacobian(lambda z: net(z.view(1, *shape)).reshape(-1), torch.zeros(n, dtype=D))
    return torch.linalg.matrix_norm(J, 2).item()


def seeded(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net.double().eval()


def ones_conv(**kw) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 1, bias=False, **kw)).double()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    return net


@pytest.mark.parametrize(
    ("mode", "kernel", "padding"),
    [
        ("reflect", 1, 1),
        ("replicate", 1, 1),
        ("circular", 1, 1),
        ("reflect", 3, 1),
        ("replicate", 3, 2),
        ("circular", 3, 2),
        ("circular", 3, 1),
        ("zeros", 3, 2),
        ("reflect", 3, 2),
    ],
)
@pytest.mark.parametrize("method", ["gram", "exact", "kernel_gram", "grid", "lipgrid"])
def test_padding_modes_are_bounded_d2(mode, kernel, padding, method):
    net = ones_conv(kernel_size=kernel, padding=padding, padding_mode=mode)
    truth = exact(net, (1, 4, 4))
    bound = float(layer_bounds(net, torch.zeros(1, 1, 4, 4, dtype=D), method=method).product.detach())
    assert bound >= truth * (1 - 1e-9), (truth, bound)


def test_reflect_and_overpadded_circular_reproducers_d2():
    for mode, method in (("reflect", "kernel_gram"), ("circular", "gram")):
        net = ones_conv(kernel_size=1, padding=1, padding_mode=mode)
        assert exact(net, (1, 4, 4)) == pytest.approx(2.0)
        assert float(layer_bounds(net, torch.zeros(1, 1, 4, 4, dtype=D), method=method).product.detach()) >= 2.0 - 1e-9
        (b,) = layer_spectral_bounds(net, input_shape=(1, 4, 4)).values()
        assert float(b.detach()) >= 2.0 - 1e-9


def random_convs():
    yield nn.Conv1d(2, 3, 3, padding=1)
    yield nn.Conv1d(2, 2, 3, padding=2, padding_mode="reflect", dilation=2)
    yield nn.Conv2d(2, 4, 3, stride=2, padding=1)
    yield nn.Conv2d(4, 4, 3, padding=1, groups=2)
    yield nn.Conv2d(2, 2, 3, padding=2, dilation=2)
    yield nn.Conv2d(2, 3, (1, 3), padding="same")
    yield nn.Conv2d(2, 3, 4, padding="same")
    yield nn.Conv2d(2, 2, 3, padding=1, padding_mode="replicate")
    yield nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular", stride=2)
    yield nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)
    yield nn.ConvTranspose2d(4, 2, 3, padding=1, groups=2)
    yield nn.ConvTranspose1d(2, 2, 3, stride=2)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("i", range(12))
@pytest.mark.parametrize("method", ["gram", "exact", "kernel_gram"])
def test_torch_convolutions_are_bounded(i, method):
    conv = seeded(list(random_convs())[i], i)
    shape = (conv.in_channels, 6) if isinstance(conv, nn.Conv1d | nn.ConvTranspose1d) else (conv.in_channels, 6, 6)
    net = nn.Sequential(conv)
    truth = exact(net, shape)
    bound = float(layer_bounds(net, torch.zeros(1, *shape, dtype=D), method=method).product.detach())
    assert truth * (1 - 1e-9) <= bound <= truth * 20


def test_unknown_and_skipped_modules_d3():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(5).double().eval()
    with torch.no_grad():
        bn.running_var.fill_(0.01)
    net = nn.Sequential(nn.Linear(6, 5), bn, nn.Linear(5, 3)).double()
    assert float(layer_bounds(net, torch.zeros(1, 6, dtype=D)).product.detach()) >= exact(net, (6,))
    up = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Upsample(scale_factor=2)).double()
    assert float(layer_bounds(up, torch.zeros(1, 1, 4, 4, dtype=D)).product.detach()) >= exact(up, (1, 4, 4)) * (
        1 - 1e-9
    )
    shared = nn.Linear(4, 4).double()
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    nb = layer_bounds(twice, torch.zeros(1, 4, dtype=D))
    assert len([lb for lb in nb.layers if lb.kind == "linear"]) == 2
    assert float(nb.product.detach()) >= exact(nn.Sequential(shared, shared), (4,))

    class Custom(nn.Module):
        def forward(self, x):
            return 3 * x

    custom = Custom()
    with pytest.raises(ValueError, match="Custom"):
        layer_bounds(nn.Sequential(nn.Linear(2, 2), custom), torch.zeros(1, 2))
    assert float(layer_bounds(nn.Sequential(custom), torch.zeros(1, 2), assume={custom: 3.0}).product.detach()) == 3.0


def test_stabkit_layers_state_their_guarantee():
    net = nn.Sequential(SRLinear(4, 4), MaxMin(), LinearNormalized(4, 3)).double()
    assert float(layer_bounds(net, torch.zeros(1, 4, dtype=D)).product.detach()) == pytest.approx(
        net[2].lipschitz_constant()
    )


def test_residual_blocks_compose_as_one_plus_body():
    body = seeded(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)))
    res = Residual(body)
    nb = layer_bounds(nn.Sequential(res), torch.zeros(1, 4, dtype=D), method="exact")
    assert float(nb.product.detach()) == pytest.approx(1 + float(layer_bounds(body, method="exact").product.detach()))


def test_bounding_never_changes_the_model_d3():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Dropout(0.5)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    layer_bounds(net, torch.randn(2, 1, 5, 5))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for m in net.modules())


def test_train_mode_batchnorm_without_running_stats_is_refused():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="batch statistics"):
        layer_bounds(net, torch.zeros(2, 2))


def test_pooling_bounds():
    for pool in (nn.AvgPool2d(3, stride=1, padding=1), nn.AdaptiveAvgPool2d(3), nn.MaxPool2d(3, stride=2)):
        net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), pool).double()
        with torch.no_grad():
            net[0].weight.fill_(1.0)
        x = torch.randn(1, 1, 7, 7, dtype=D)
        truth = exact(net, (1, 7, 7)) if not isinstance(pool, nn.MaxPool2d) else 1.0
        assert float(layer_bounds(net, x).product.detach()) >= truth * (1 - 1e-9)


def test_penalty_uses_the_same_engine():
    net = ones_conv(kernel_size=1, padding=1, padding_mode="replicate")
    pen = lipschitz_penalty(net, input_shape=(1, 4, 4))
    assert float(pen.detach()) >= 1.0 - 1e-9  # relu(2 − 1)
