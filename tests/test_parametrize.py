"""spectral_rescale / aol as parametrizations of a user's own layers: guarantee, equivalence, removal, export."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from stabkit.layers import (
    AOLLinear,
    SRConv2d,
    aol,
    export_plain,
    is_rescaled,
    remove_spectral_rescale,
    spectral_rescale,
)
from stabkit.lipschitz import layer_bounds

D = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def jac_norm(m: nn.Module, x: torch.Tensor) -> float:
    J = torch.autograd.functional.jacobian(lambda z: m(z.view_as(x)).reshape(-1), x.reshape(-1))
    return torch.linalg.matrix_norm(J, 2).item()


def randomize(m: nn.Module, seed: int, scale: float = 3.0) -> nn.Module:
    g = gen(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return m


LAYERS = [
    (lambda: nn.Linear(6, 4), (1, 6)),
    (lambda: nn.Linear(3, 7), (1, 3)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1), (1, 2, 6, 6)),
    (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=2, dilation=2), (1, 2, 7, 7)),
    (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2), (1, 4, 5, 5)),
    (lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"), (1, 2, 5, 5)),
    (lambda: nn.Conv1d(2, 3, 5, padding=2), (1, 2, 9)),
    (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1), (1, 2, 4, 4)),
]


@pytest.mark.parametrize("i", range(len(LAYERS)))
@pytest.mark.parametrize("n_iter", [1, 3])
def test_rescaled_user_layers_are_1_lipschitz(i, n_iter):
    make, shape = LAYERS[i]
    m = spectral_rescale(randomize(make().to(D), i), n_iter=n_iter)
    assert isinstance(m, type(make())) and is_rescaled(m)
    x = torch.randn(shape, generator=gen(9), dtype=D)
    assert jac_norm(m, x) <= 1 + 1e-9
    assert float(layer_bounds(nn.Sequential(m), x).product) == 1.0
    # trains like any layer: gradients reach the original weight
    m(x).sum().backward()
    assert torch.isfinite(m.parametrizations.weight.original.grad).all()


def test_aol_parametrization_equals_the_ready_layer():
    ready = AOLLinear(6, 4, generator=gen(1), dtype=D)
    mine = nn.Linear(6, 4, dtype=D)
    with torch.no_grad():
        mine.weight.copy_(ready.weight)
        mine.bias.copy_(ready.bias)
    aol(mine)
    torch.testing.assert_close(mine.weight, ready.effective_weight())
    conv = SRConv2d(2, 3, 3, n_iter=2, generator=gen(2), dtype=D)
    user = nn.Conv2d(2, 3, 3, padding=1, dtype=D)
    with torch.no_grad():
        user.weight.copy_(conv.weight)
    spectral_rescale(user, n_iter=2)
    torch.testing.assert_close(user.weight, conv.effective_weight())


def test_remove_keeps_or_restores_the_weight_and_the_class():
    m = spectral_rescale(randomize(nn.Linear(5, 5), 0))
    rescaled = m.weight.detach().clone()
    remove_spectral_rescale(m)
    assert type(m) is nn.Linear and not is_rescaled(m)
    torch.testing.assert_close(m.weight.detach(), rescaled)
    original = randomize(nn.Linear(5, 5), 1)
    w0 = original.weight.detach().clone()
    remove_spectral_rescale(spectral_rescale(original), keep_rescaled=False)
    torch.testing.assert_close(original.weight.detach(), w0)
    with pytest.raises(ValueError, match="no stabkit rescaling"):
        remove_spectral_rescale(nn.Linear(2, 2))


def test_export_bakes_the_rescaling_in():
    net = nn.Sequential(spectral_rescale(randomize(nn.Conv2d(1, 2, 3, padding=1), 3)), nn.ReLU())
    plain = export_plain(net)
    assert type(plain[0]) is nn.Conv2d and not is_rescaled(plain[0])
    x = torch.randn(2, 1, 5, 5, generator=gen(4))
    torch.testing.assert_close(plain(x), net(x))
    buf = io.BytesIO()
    torch.save(plain, buf)
    assert b"stabkit" not in buf.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"),
        lambda: nn.Conv2d(1, 1, 3, padding=2, padding_mode="circular"),
        lambda: nn.Bilinear(2, 2, 2),
    ],
)
def test_refuses_what_it_cannot_guarantee(make):
    with pytest.raises(ValueError):
        spectral_rescale(make())


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_iter"):
        spectral_rescale(nn.Linear(2, 2), n_iter=0)
    with pytest.raises(ValueError, match="already"):
        aol(aol(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="weight"):
        spectral_rescale(nn.Linear(2, 2), "bias")
